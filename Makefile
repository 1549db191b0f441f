# emseg: `make help` lists the targets. Every target bootstraps .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# model.encoder_weights: auto = ImageNet when smp's hub (or its cache) is reachable, else random
# init with a warning (emseg/model.py); or imagenet, null, a file path.
ENCODER_WEIGHTS ?= auto
comma := ,
space := $(subst ,, )
# $(call commas,A B C) = A,B,C (the values of a Hydra sweep).
commas = $(subst $(space),$(comma),$(strip $(1)))

.DEFAULT_GOAL := help
.PHONY: help setup data train sweep eval predict tensorboard test test-all lint fmt clean-outputs \
	reproduce-report report bench quality quality-best quality-ensemble quality-snapshots quality-val quality-ablations \
	quality-report gpu-stage gpu-check gpu-eval peers peers-table

# reproduce-report: BUDGET=cpu (about two hours for the six runs on a 2-core bf16 CPU) or
# BUDGET=full (the report's 25 x 60 steps, meant for a GPU). Runs live in a fixed directory so
# that re-running the target resumes unfinished runs and skips finished ones (resume=true).
BUDGET ?= cpu
ABLATIONS ?= baseline,dice,adagrad,l2,focal,sgd
REPORT_RUNS ?= outputs/reproduce/$(BUDGET)
REPORT_DIR ?= experiments/reproduce_report_$(BUDGET)
# Every run is evaluated in <run>/eval; the baseline also saves its predictions and is evaluated
# with naive tiling as well (eval_naive), for the report's figures.
REPORT_NAMES = $(subst $(comma),$(space),$(ABLATIONS))
REPORT_OTHERS = $(filter-out baseline,$(REPORT_NAMES))
REPORT_BASELINE = $(if $(filter baseline,$(REPORT_NAMES)),$(REPORT_RUNS)/baseline)
# eval.py on a run directory evaluates its best checkpoint; resume=true skips finished ones.
# Sweeps over several checkpoints sweep a name (+run_name, +snapshot) that gives both the
# checkpoint and the output directory (an absolute hydra.sweep.subdir: in the run directory).
EVAL_RESUME := resume=true progress=false
# quality: issue 6's configurations (conf/experiment/fast.yaml, best.yaml), one fixed run
# directory each, so that re-running the target resumes an unfinished training.
QUALITY ?= fast
QUALITY_RUNS ?= outputs/quality
# experiment=best trains exactly as fast does; `make quality-best QUALITY_RUN=<fast run>` gives
# a trained run best's inference instead of training it again: choose.py with best's search
# (settings_search=wide) into <run>/best_config.ckpt, then eval.py of that copy.
QUALITY_RUN ?= $(QUALITY_RUNS)/$(QUALITY)
QUALITY_OUT ?= $(QUALITY_RUN)/eval_$(QUALITY)
# Further eval.py overrides of the test evaluations; the checkpoint's own evaluation block (the
# settings chosen on the validation hold-out) applies beneath them.
QUALITY_EVAL_ARGS ?=
# The Lucchi++ labels of the same test images, scored from the same predictions.
LUCCHIPP_TOO := '+extra_masks.lucchipp=$${paths.data_dir}/lucchipp/testing_groundtruth.tif'
# Evaluate the snapshot checkpoints too (the points of the fg-IoU-vs-training-time plot).
QUALITY_SNAPSHOTS ?= $(if $(filter fast,$(QUALITY)),true,false)
# quality-ablations: each run removes one of experiment=fast's changes (baseline = none removed).
QUALITY_ABLATIONS ?= baseline,fast_2d,fast_bce,fast_no_ema,fast_fg_half,fast_seed_lr
# quality-val: the candidates of conf/val_choice, evaluated on the validation hold-out in this
# order: single changes against the default inference first, then greedy combinations of the
# ones that helped (experiments/quality/README.md).
QUALITY_VAL_CHOICES ?= border32 border0 border64 median3 tta_flips border0_median3 \
	border0_median3_flips border0_median3_d4 border0_median5 border0_median7 border0_median9 \
	border0_median7_flips
# snapshot-*.ckpt of the quality run, by name (read when quality-snapshots runs).
SNAPSHOTS = $(basename $(notdir $(wildcard $(QUALITY_RUN)/checkpoints/snapshot-*.ckpt)))

# GPU check (benchmarks/gpu_check, issue 22): what travels to the GPU machine, and where its
# returned files (report.json, gpu_weights.*, gpu_run.tar.gz) are evaluated on the CPU.
GPU_STAGE ?= outputs/gpu_stage
GPU_RESULTS ?= outputs/gpu_check
GPU_EVAL ?= outputs/gpu_eval

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install emseg with its dependencies

data: $(STAMP) ## link (verified) or download the EPFL / Lucchi++ volumes into data/
	$(PY) -m emseg.data.prepare

train: data ## train the report's configuration (VGG16-UNet, BCE, Adam 1e-4, 25 x 60 steps); ARGS= for overrides
	$(PY) train.py experiment=seed_report model.encoder_weights=$(ENCODER_WEIGHTS) $(ARGS)

sweep: data ## the 2 x 2 ablation: loss=bce,dice x optim=adam,adagrad (ARGS= for more overrides)
	$(PY) train.py -m loss=bce,dice optim=adam,adagrad model.encoder_weights=$(ENCODER_WEIGHTS) $(ARGS)

reproduce-report: data ## train + evaluate the report's runs and ablations, then build the report (BUDGET=cpu|full)
	$(PY) train.py -m experiment=seed_report ablation=$(ABLATIONS) budget=$(BUDGET) \
		model.encoder_weights=$(ENCODER_WEIGHTS) resume=true \
		hydra.sweep.dir=$(REPORT_RUNS) hydra.sweep.subdir='$${hydra.runtime.choices.ablation}' \
		test_after_fit=false $(ARGS)
	$(if $(REPORT_OTHERS),$(PY) eval.py -m +run_name=$(call commas,$(REPORT_OTHERS)) \
		'ckpt_path=$(REPORT_RUNS)/$${run_name}' $(EVAL_RESUME) \
		'hydra.sweep.subdir=$(abspath $(REPORT_RUNS))/$${run_name}/eval')
	$(if $(REPORT_BASELINE),$(PY) eval.py ckpt_path=$(REPORT_BASELINE) save_predictions=true \
		$(EVAL_RESUME) hydra.run.dir=$(REPORT_BASELINE)/eval)
	$(if $(REPORT_BASELINE),$(PY) eval.py ckpt_path=$(REPORT_BASELINE) inference=naive \
		save_predictions=true $(EVAL_RESUME) hydra.run.dir=$(REPORT_BASELINE)/eval_naive)
	$(MAKE) report BUDGET=$(BUDGET)

quality: data ## train experiment=$(QUALITY) (resumable), evaluate its best + snapshot checkpoints (test, Lucchi++ in the same pass), rebuild experiments/quality
	[ -f $(QUALITY_RUN)/metrics.json ] || \
	  $(PY) train.py experiment=$(QUALITY) model.encoder_weights=$(ENCODER_WEIGHTS) resume=true \
	    test_after_fit=false hydra.run.dir=$(QUALITY_RUN) $(ARGS)
	$(PY) eval.py ckpt_path=$(QUALITY_RUN) $(QUALITY_EVAL_ARGS) $(LUCCHIPP_TOO) $(EVAL_RESUME) \
		hydra.run.dir=$(QUALITY_OUT)
	$(if $(filter true,$(QUALITY_SNAPSHOTS)),$(MAKE) quality-snapshots)
	$(MAKE) quality-report

# quality-ensemble: ENSEMBLE_MEMBERS (run dirs or checkpoints, space-separated) averaged as one
# checkpoint in ENSEMBLE_DIR (ensemble.py), its settings chosen with best's search
# (settings_search=wide) on the members' shared hold-out, then eval.py of it (test + Lucchi++)
# only if its validation fg IoU is at least its best member's (require_gain_over_members: name
# each member's best_config.ckpt from quality-best, so that both sides had the same search).
ENSEMBLE_MEMBERS ?=
ENSEMBLE_DIR ?= $(QUALITY_RUNS)/ensemble
quality-ensemble: $(STAMP) ## ENSEMBLE_MEMBERS="<run> <run>" as one network (ensemble.py) into ENSEMBLE_DIR, choose.py settings_search=wide, eval.py
	[ -n "$(strip $(ENSEMBLE_MEMBERS))" ] || { echo "ENSEMBLE_MEMBERS is empty: name two or more runs" >&2; exit 2; }
	mkdir -p $(ENSEMBLE_DIR)
	[ -f $(ENSEMBLE_DIR)/ensemble.ckpt ] || \
	  $(PY) ensemble.py 'members=[$(call commas,$(ENSEMBLE_MEMBERS))]' \
	    output_ckpt=$(ENSEMBLE_DIR)/ensemble.ckpt hydra.run.dir=$(ENSEMBLE_DIR)/write
	[ -f $(ENSEMBLE_DIR)/best_config.ckpt ] || \
	  $(PY) choose.py ckpt_path=$(ENSEMBLE_DIR)/ensemble.ckpt settings_search=wide \
	    require_gain_over_members=true \
	    output_ckpt=$(ENSEMBLE_DIR)/best_config.ckpt hydra.run.dir=$(ENSEMBLE_DIR)/choose_best
	$(PY) eval.py ckpt_path=$(ENSEMBLE_DIR)/best_config.ckpt $(QUALITY_EVAL_ARGS) $(LUCCHIPP_TOO) \
		$(EVAL_RESUME) hydra.run.dir=$(ENSEMBLE_DIR)/eval_best

quality-best: $(STAMP) ## experiment=best's inference on a trained run: choose.py settings_search=wide into $(QUALITY_RUN)/best_config.ckpt, eval.py it (test + Lucchi++)
	[ -f $(QUALITY_RUN)/best_config.ckpt ] || \
	  $(PY) choose.py ckpt_path=$(QUALITY_RUN) settings_search=wide \
	    output_ckpt=$(QUALITY_RUN)/best_config.ckpt hydra.run.dir=$(QUALITY_RUN)/choose_best
	$(PY) eval.py ckpt_path=$(QUALITY_RUN)/best_config.ckpt $(QUALITY_EVAL_ARGS) $(LUCCHIPP_TOO) \
		$(EVAL_RESUME) hydra.run.dir=$(QUALITY_RUN)/eval_best

# A target of its own so that the snapshot list is read after the training that writes them.
quality-snapshots: $(STAMP) ## evaluate the snapshot checkpoints of $(QUALITY_RUN) (the fg-IoU-vs-time points)
	$(if $(SNAPSHOTS),$(PY) eval.py -m +snapshot=$(call commas,$(SNAPSHOTS)) \
		'ckpt_path=$(QUALITY_RUN)/checkpoints/$${snapshot}.ckpt' $(QUALITY_EVAL_ARGS) \
		$(EVAL_RESUME) 'hydra.sweep.subdir=$(abspath $(QUALITY_OUT))_snapshots/$${snapshot}', \
		@echo "no snapshot checkpoints in $(QUALITY_RUN)/checkpoints")

quality-val: $(STAMP) ## compare inference settings (conf/val_choice) for experiment=$(QUALITY) on the validation hold-out
	$(PY) eval.py -m ckpt_path=$(QUALITY_RUNS)/$(QUALITY) split=val checkpoint_settings=false \
		val_choice=$(call commas,$(QUALITY_VAL_CHOICES)) $(EVAL_RESUME) \
		hydra.sweep.dir=$(QUALITY_RUNS)/$(QUALITY)/val_choices \
		hydra.sweep.subdir='$${hydra.runtime.choices.val_choice}'

quality-ablations: data ## leave-one-out runs of experiment=fast_short, compared on the validation hold-out (~18 min each)
	$(PY) train.py -m experiment=fast_short ablation=$(QUALITY_ABLATIONS) \
		model.encoder_weights=$(ENCODER_WEIGHTS) resume=true \
		hydra.sweep.dir=$(QUALITY_RUNS)/ablations hydra.sweep.subdir='$${hydra.runtime.choices.ablation}' \
		$(ARGS)

quality-report: $(STAMP) ## rebuild experiments/quality from the runs in experiments/quality/rows.yaml
	$(PY) -m scripts.quality_report --rows experiments/quality/rows.yaml --out experiments/quality

report: $(STAMP) ## rebuild the report from existing run directories (no training)
	$(PY) -m scripts.reproduce_report --runs $(REPORT_RUNS) --out $(REPORT_DIR)

eval: $(STAMP) ## evaluate a checkpoint on the whole test volume: make eval CKPT=<ckpt> [ARGS=data=lucchipp]
	$(PY) eval.py ckpt_path=$(CKPT) $(ARGS)

predict: $(STAMP) ## segment any TIFF: make predict CKPT=<ckpt> INPUT=<in.tif> OUTPUT=<out.tif> [ARGS=...]
	$(PY) predict.py ckpt_path=$(CKPT) input=$(INPUT) output=$(OUTPUT) $(ARGS)

bench: $(STAMP) ## training/inference speed vs plain PyTorch (~15 min) -> experiments/bench/; CKPT= for the inference sections; ARGS=--quick
	$(PY) -m benchmarks.bench $(if $(CKPT),--ckpt $(CKPT)) $(ARGS)

gpu-stage: data ## build $(GPU_STAGE): wheels + the last EPFL training slices (xz) that fit the GPU machine's 64 MiB
	$(PY) -m benchmarks.gpu_check.stage --data-dir data --out $(GPU_STAGE) $(ARGS)

# ARGS=--dry-run: tiny sizes on the CPU, a synthetic volume staged like the EPFL subset, results
# in outputs/gpu_check_dry.
gpu-check: $(STAMP) ## the GPU check on this machine's CUDA GPU (< 8 min; ARGS=--dry-run: tiny, CPU)
	$(PY) -m benchmarks.gpu_check \
		$(if $(filter --dry-run,$(ARGS)),,--data-dir data --out $(GPU_RESULTS)) $(ARGS)

gpu-eval: data ## the GPU-trained weights in $(GPU_RESULTS): reassemble, choose settings on validation, evaluate the EPFL test volume on the CPU
	$(PY) -m benchmarks.gpu_check.weights $(GPU_RESULTS) --out $(GPU_EVAL)/gpu.ckpt \
		--data-dir data --choose-settings
	$(PY) eval.py ckpt_path=$(GPU_EVAL)/gpu.ckpt data=epfl $(LUCCHIPP_TOO) \
		hydra.run.dir=$(GPU_EVAL)/eval $(ARGS)

# The peer benchmark (issue 19): each peer in its own venv under .peers/, trained on Lucchi++ for
# PEER_BUDGET_S seconds, its own prediction of the test volume scored by eval.py; resumable
# (every step is skipped when its output exists). One peer at a time: they share the 2 cores.
PEERS ?= emseg nnunet biapy
PEER_RUNS ?= outputs/peers
PEER_BUDGET_S ?= 7200
peers: data ## Lucchi++ peer benchmark: PEERS="emseg nnunet biapy", PEER_BUDGET_S=7200 of training each, into outputs/peers/<peer>; then peers-table
	for peer in $(PEERS); do BUDGET_S=$(PEER_BUDGET_S) bash benchmarks/peers/$$peer/run.sh $(PEER_RUNS)/$$peer || exit 1; done
	$(MAKE) peers-table

peers-table: $(STAMP) ## table + plot: outputs/peers/*/result.json copied to experiments/peers/runs/, every record there -> experiments/peers
	$(PY) benchmarks/peers/table.py $(PEER_RUNS) --out experiments/peers

tensorboard: $(STAMP) ## TensorBoard over every run in outputs/
	$(VENV)/bin/tensorboard --logdir outputs --bind_all

# make test runs the tests on one pytest-xdist worker per core (TEST_WORKERS=0: in this process).
TEST_WORKERS ?= auto
test: $(STAMP) ## fast tests (not marked slow), one worker per core
	$(PY) -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist worksteal $(ARGS)

test-all: $(STAMP) ## every test, slow ones included
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP) ## ruff autofix and format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-outputs: ## delete outputs/ (all runs!)
	rm -rf outputs
