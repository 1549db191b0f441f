# emseg: `make help` lists the targets. Every target bootstraps .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# imagenet when smp's hub (or its cache) is reachable, else null (random init); or a file path.
ENCODER_WEIGHTS ?= $(shell $(PY) -m emseg.model)

.DEFAULT_GOAL := help
.PHONY: help setup data train sweep eval predict tensorboard test test-all lint fmt clean-outputs \
	reproduce-report report bench quality quality-val quality-ablations quality-report

# reproduce-report: BUDGET=cpu (about two hours for the six runs on a 2-core bf16 CPU) or
# BUDGET=full (the report's 25 x 60 steps, meant for a GPU). Runs live in a fixed directory so
# that re-running the target resumes unfinished runs and skips finished ones.
BUDGET ?= cpu
ABLATIONS ?= baseline,dice,adagrad,l2,focal,sgd
REPORT_RUNS ?= outputs/reproduce/$(BUDGET)
REPORT_DIR ?= experiments/reproduce_report_$(BUDGET)
# quality: issue 6's configurations (conf/experiment/fast.yaml, best.yaml), one fixed run
# directory each, so that re-running the target resumes an unfinished training.
QUALITY ?= fast
QUALITY_RUNS ?= outputs/quality
# experiment=best trains exactly as fast does: QUALITY=best QUALITY_RUN=outputs/quality/fast
# evaluates fast's run with best's settings instead of training it again.
QUALITY_RUN ?= $(QUALITY_RUNS)/$(QUALITY)
# eval.py overrides for the test evaluations: the experiment's evaluation block (the settings
# chosen on the validation hold-out), given explicitly so that checkpoints trained before the
# block existed are evaluated the same way.
QUALITY_EVAL_ARGS ?= $(shell $(PY) -m emseg.inference.settings $(QUALITY))
# The Lucchi++ labels of the same test images, scored from the same predictions.
LUCCHIPP_TOO := '+extra_masks.lucchipp=$${paths.data_dir}/lucchipp/testing_groundtruth.tif'
# Evaluate the snapshot checkpoints too (the points of the fg-IoU-vs-training-time plot).
QUALITY_SNAPSHOTS ?= $(if $(filter fast,$(QUALITY)),true,false)
# quality-ablations: each run removes one of experiment=fast's changes (baseline = none removed).
QUALITY_ABLATIONS ?= baseline,fast_2d,fast_bce,fast_no_ema,fast_fg_half,fast_seed_lr
# quality-val: name:override,override,... per candidate, evaluated one after another on the
# validation hold-out: single changes against the default inference first, then greedy
# combinations of the ones that helped (experiments/quality/README.md).
QUALITY_VAL_CHOICES ?= border32: border0:inference.border_pad=0 border64:inference.border_pad=64 \
	median3:postprocess.median_size=3 tta_flips:inference.tta=flips \
	border0_median3:inference.border_pad=0,postprocess.median_size=3 \
	border0_median3_flips:inference.border_pad=0,postprocess.median_size=3,inference.tta=flips \
	border0_median3_d4:inference.border_pad=0,postprocess.median_size=3,inference.tta=d4 \
	border0_median5:inference.border_pad=0,postprocess.median_size=5 \
	border0_median7:inference.border_pad=0,postprocess.median_size=7 \
	border0_median9:inference.border_pad=0,postprocess.median_size=9 \
	border0_median7_flips:inference.border_pad=0,postprocess.median_size=7,inference.tta=flips

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

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
	@set -e; for run in $(REPORT_RUNS)/*/; do \
	  ckpt=$$(ls $$run/checkpoints/best-*.ckpt | head -n 1); \
	  if [ ! -f $$run/eval/metrics.json ]; then \
	    save=false; [ "$$(basename $$run)" = baseline ] && save=true; \
	    $(PY) eval.py ckpt_path=$$ckpt save_predictions=$$save progress=false hydra.run.dir=$$run/eval; \
	  fi; \
	  if [ "$$(basename $$run)" = baseline ] && [ ! -f $$run/eval_naive/metrics.json ]; then \
	    $(PY) eval.py ckpt_path=$$ckpt inference=naive save_predictions=true progress=false \
	      hydra.run.dir=$$run/eval_naive; \
	  fi; \
	done
	$(MAKE) report BUDGET=$(BUDGET)

quality: data ## train experiment=$(QUALITY) (resumable), evaluate its best + snapshot checkpoints (test, Lucchi++ in the same pass), rebuild experiments/quality
	[ -f $(QUALITY_RUN)/metrics.json ] || \
	  $(PY) train.py experiment=$(QUALITY) model.encoder_weights=$(ENCODER_WEIGHTS) resume=true \
	    test_after_fit=false hydra.run.dir=$(QUALITY_RUN) $(ARGS)
	@set -e; run=$(QUALITY_RUN); out=$$run/eval_$(QUALITY); \
	best=$$(ls $$run/checkpoints/best-*.ckpt | head -n 1); \
	[ -f $$out/metrics.json ] || \
	  $(PY) eval.py ckpt_path=$$best $(QUALITY_EVAL_ARGS) $(LUCCHIPP_TOO) progress=false \
	    hydra.run.dir=$$out; \
	if [ "$(QUALITY_SNAPSHOTS)" = true ]; then \
	  for ckpt in $$run/checkpoints/snapshot-*.ckpt; do \
	    point=$${out}_snapshots/$$(basename $$ckpt .ckpt); \
	    [ -f $$point/metrics.json ] || \
	      $(PY) eval.py ckpt_path=$$ckpt $(QUALITY_EVAL_ARGS) progress=false hydra.run.dir=$$point; \
	  done; \
	fi
	$(MAKE) quality-report

quality-val: $(STAMP) ## compare inference settings for experiment=$(QUALITY) on the validation hold-out (eval.py split=val)
	@set -e; run=$(QUALITY_RUNS)/$(QUALITY); \
	best=$$(ls $$run/checkpoints/best-*.ckpt | head -n 1); \
	for choice in $(QUALITY_VAL_CHOICES); do \
	  name=$${choice%%:*}; args=$${choice#*:}; out=$$run/val_choices/$$name; \
	  [ -f $$out/metrics.json ] || \
	    $(PY) eval.py ckpt_path=$$best split=val checkpoint_settings=false $${args//,/ } progress=false hydra.run.dir=$$out; \
	done

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

tensorboard: $(STAMP) ## TensorBoard over every run in outputs/
	$(VENV)/bin/tensorboard --logdir outputs --bind_all

test: $(STAMP) ## fast tests (not marked slow)
	$(PY) -m pytest -m "not slow" -q $(ARGS)

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
