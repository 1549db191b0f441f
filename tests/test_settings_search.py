"""Inference settings chosen on the run's own validation hold-out after training (issue 17/4)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from emseg.errors import ConfigError
from emseg.evaluate import run as run_eval
from emseg.inference import WindowSettings, build_pipeline
from emseg.inference.settings import applicable_evaluation
from emseg.postprocess import OFF
from emseg.settings_search import (
    MEDIAN_OFF,
    Candidate,
    Median,
    SettingsSearch,
    _scored,
    choose,
    median_candidates,
)
from emseg.train import _run_config, _wants_search
from emseg.train import run as run_train
from tests.conftest import compose_train
from tests.test_eval_predict import compose_cfg

MEDIAN_3 = Median({"median_size": 3, "median_nm": None}, (3, 3, 3))


def _candidate(fg_iou: float, **changes) -> Candidate:
    settings = {"border_pad": 32, "tta": "none", "median": MEDIAN_OFF, "threshold": 0.5}
    return Candidate(**{**settings, **changes}, fg_iou=fg_iou)


def test_the_simplest_candidate_within_the_margin_wins():
    default = _candidate(0.850)
    median = _candidate(0.870, median=MEDIAN_3)
    median_flips = _candidate(0.872, median=MEDIAN_3, tta="flips")  # +0.002: not enough
    border = _candidate(0.8705, border_pad=0)  # as good as the median, as simple: higher IoU
    assert choose([default, median, median_flips], margin=0.003) is median
    assert choose([default, median, median_flips], margin=0.001) is median_flips
    assert choose([default, median, median_flips, border], margin=0.003) is border
    assert choose([default, _candidate(0.852, threshold=0.45)], margin=0.003) is default


def _constructed_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blobs, and probabilities of them with isolated false voxels that a 3D median removes
    (while thresholds change nothing: the probabilities are 0.1 or 0.9)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:12, :48, :48]
    mask = ((yy - 24) ** 2 + (xx - 20) ** 2 < 100) | ((yy - 10) ** 2 + (xx - 38) ** 2 < 36)
    mask = np.broadcast_to(mask, zz.shape).astype(np.uint8)
    flipped = rng.random(mask.shape) < 0.08
    probs = np.where(mask.astype(bool) ^ flipped, 0.9, 0.1).astype(np.float32)
    return probs, mask


def _fg_iou(prediction: np.ndarray, mask: np.ndarray) -> float:
    pred, true = prediction > 0, mask > 0
    return float((pred & true).sum() / (pred | true).sum())


def test_the_search_picks_a_setting_that_is_measurably_better():
    probs, mask = _constructed_case()
    search = SettingsSearch()
    medians = median_candidates(search.median_sides, None, False)
    scored = list(_scored([probs], [mask], WindowSettings(), medians, search.thresholds))
    chosen = choose(scored, search.margin)
    default = next(c for c in scored if c.changes == 0)
    assert chosen.median.footprint != OFF and chosen.threshold == 0.5
    assert chosen.fg_iou > default.fg_iou + 0.05  # measurably better, far beyond the margin
    filtered = ndimage.median_filter(probs, size=chosen.median.footprint, mode="nearest")
    assert chosen.fg_iou == pytest.approx(_fg_iou(filtered > 0.5, mask))
    assert default.fg_iou == pytest.approx(_fg_iou(probs > 0.5, mask))
    # Clean probabilities: no option gains more than the margin, so the defaults stay.
    clean = np.where(mask > 0, 0.9, 0.1).astype(np.float32)
    scored = list(_scored([clean], [mask], WindowSettings(), medians, search.thresholds))
    assert choose(scored, search.margin).changes == 0


def test_median_candidates_respect_the_voxel_size():
    thick = median_candidates([3, 5, 7], (50.0, 5.0, 5.0), in_config=True)
    assert [m.footprint for m in thick] == [OFF, (1, 3, 3), (1, 5, 5), (1, 7, 7)]
    assert [m.setting.get("median_nm") for m in thick[1:]] == [15.0, 25.0, 35.0]
    found = median_candidates([3, 7], (50.0, 5.0, 5.0), in_config=False)  # the volume's only
    assert [m.setting["median_size"] for m in found[1:]] == [[1, 3, 3], [1, 7, 7]]
    iso = median_candidates([3, 5], (5.0, 5.0, 5.0), in_config=False)
    assert [m.setting["median_size"] for m in iso[1:]] == [3, 5]
    assert [m.setting["median_size"] for m in median_candidates([3], None, False)] == [0, 3]


def test_search_candidates_are_checked():
    assert SettingsSearch(border_pads=[0], thresholds=[0.4]).border_pads == (0, 32)
    with pytest.raises(ConfigError, match="settings_search.median_sides"):
        SettingsSearch(median_sides=[4])
    with pytest.raises(ConfigError, match="settings_search.ttas"):
        SettingsSearch(ttas=["rot"])


@pytest.fixture(scope="module")
def searched_run(tmp_path_factory, synthetic_data_dir):
    """A tiny training run with the search after fit (its run directory)."""
    from tests.conftest import TINY_OVERRIDES

    run_dir = tmp_path_factory.mktemp("searched_run")
    extra = ["logger=none", "test_after_fit=false", "choose_settings=true"]
    extra += ["callbacks.validation_images=null", "callbacks.lr_monitor=null"]
    extra += ["settings_search.median_sides=[3]", "settings_search.ttas=[none,flips]"]
    extra += ["settings_search.thresholds=[0.4,0.6]"]  # + 0.5, always searched: 3 thresholds
    run_train(compose_train([*TINY_OVERRIDES, *extra], run_dir, synthetic_data_dir))
    return run_dir


def _best(run_dir):
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    return best


def test_the_chosen_block_lands_in_the_best_checkpoint_and_eval_applies_it(searched_run, tmp_path):
    record = json.loads((searched_run / "settings_search.json").read_text())
    config = torch.load(_best(searched_run), weights_only=False)["emseg_config"]
    block = config["evaluation"]
    assert block == record["evaluation"]
    assert block["chosen_on"] == {k: config["data"][k] for k in ("train_image", "train_mask")}
    assert set(block["inference"]) == {"border_pad", "tta"} and "threshold" in block
    assert len(record["candidates"]) == (2 * 2 + 2) * 3  # (border x 2 medians + flips) x 3
    summary = json.loads((searched_run / "metrics.json").read_text())
    assert summary["evaluation"] == block
    assert summary["metrics"]["settings_search/fg_iou"] == block["validation_fg_iou"]

    # The defaults' candidate is exactly what eval.py split=val scores with the defaults.
    plain = ["split=val", f"ckpt_path={searched_run}", "checkpoint_settings=false"]
    metrics = run_eval(compose_cfg("eval", plain, tmp_path / "plain"))
    assert block["validation_fg_iou_of_defaults"] == pytest.approx(metrics["fg_iou"], abs=1e-12)

    # eval.py on the run applies every chosen setting, and reports them.
    run_eval(compose_cfg("eval", ["split=val", f"ckpt_path={searched_run}"], tmp_path / "own"))
    own = json.loads((tmp_path / "own" / "metrics.json").read_text())
    expected = {f"inference.{k}": v for k, v in block["inference"].items()}
    expected |= {f"postprocess.{k}": v for k, v in block["postprocess"].items()}
    assert own["checkpoint_settings"] == {"threshold": block["threshold"], **expected}
    assert own["threshold"] == block["threshold"]
    chosen_median = record["chosen"]["median_footprint"]
    assert own["metrics"]["fg_iou"] == pytest.approx(block["validation_fg_iou"], abs=1e-9), (
        chosen_median
    )


def test_an_explicit_threshold_wins_over_the_chosen_one(searched_run):
    cfg = compose_cfg("eval", [f"ckpt_path={searched_run}"], searched_run / "unused")
    chosen = torch.load(_best(searched_run), weights_only=False)["emseg_config"]["evaluation"]
    assert build_pipeline(cfg).threshold == chosen["threshold"]
    from emseg.inference.settings import apply_checkpoint_settings

    cfg = compose_cfg("eval", [f"ckpt_path={searched_run}", "threshold=0.61"], searched_run)
    applied = apply_checkpoint_settings(cfg, {"evaluation": chosen}, ["threshold=0.61"])
    assert "threshold" not in applied and cfg.threshold == 0.61


def test_a_run_on_other_data_does_not_get_the_chosen_block(searched_run, tmp_path):
    config = torch.load(_best(searched_run), weights_only=False)["emseg_config"]
    assert applicable_evaluation(config) == config["evaluation"]
    other = {**config, "data": {**config["data"], "train_image": str(tmp_path / "other.tif")}}
    assert applicable_evaluation(other) == {}


def test_auto_searches_only_where_no_block_was_chosen_for_the_data(tmp_path):
    def wants(*overrides: str) -> bool:
        cfg = compose_train(list(overrides), tmp_path / "run", tmp_path / "data")
        return _wants_search(cfg, SimpleNamespace(run_config=_run_config(cfg)))

    assert not wants("experiment=fast")  # its block was chosen on this (EPFL) training data
    assert wants("experiment=fast", "data=lucchipp")  # dropped for other data: search
    assert wants()  # no block at all
    assert not wants("choose_settings=false")
    with pytest.raises(ConfigError, match="choose_settings"):
        from emseg.train import check_config

        check_config(compose_train(["choose_settings=maybe"], tmp_path, tmp_path))


def test_unlabelled_voxels_are_left_out_of_the_search():
    from emseg.data.labels import IGNORE
    from emseg.settings_search import _iou_per_threshold

    probs, mask = _constructed_case(seed=1)
    partial = mask.copy()
    partial[:, :, :16] = IGNORE  # a third of every slice unlabelled
    labelled = np.s_[:, :, 16:]
    (iou,) = _iou_per_threshold([probs], [partial], [0.5])
    assert iou == pytest.approx(_fg_iou(probs[labelled] > 0.5, mask[labelled]))
    assert iou != pytest.approx(_iou_per_threshold([probs], [mask], [0.5])[0])
    # With a median: the filter runs over every voxel, the labelled ones are scored.
    (iou,) = _iou_per_threshold([probs], [partial], [0.45], (3, 3, 3))
    filtered = ndimage.median_filter(probs, size=3, mode="nearest")
    assert iou == pytest.approx(_fg_iou(filtered[labelled] > 0.45, mask[labelled]))


def test_thick_sections_get_median_candidates_in_nanometres(tmp_path, synthetic_data_dir):
    """With data.voxel_size, the median candidates are extents in nm (no z-extent at 50 nm
    sections), stored as median_nm, and eval.py converts them with the checkpoint's voxel size."""
    from tests.conftest import TINY_OVERRIDES

    extra = ["logger=none", "test_after_fit=false", "choose_settings=true"]
    extra += ["callbacks.validation_images=null", "callbacks.lr_monitor=null"]
    extra += ["settings_search.median_sides=[3]", "settings_search.ttas=[none]"]
    extra += ["++data.voxel_size=[50,5,5]"]
    run_dir = tmp_path / "run"
    run_train(compose_train([*TINY_OVERRIDES, *extra], run_dir, synthetic_data_dir))
    record = json.loads((run_dir / "settings_search.json").read_text())
    medians = {(r["median"], r["median_nm"]) for r in record["candidates"]}
    assert medians == {("off", None), ("1x3x3 (15 nm)", 15.0)}
    block = torch.load(_best(run_dir), weights_only=False)["emseg_config"]["evaluation"]
    block["postprocess"] = {"median_size": 0, "median_nm": 15.0}  # as if the median won
    path = tmp_path / "nm.ckpt"
    checkpoint = torch.load(_best(run_dir), weights_only=False)
    checkpoint["emseg_config"]["evaluation"] = block
    torch.save(checkpoint, path)
    pipeline = build_pipeline(compose_cfg("eval", [f"ckpt_path={path}"], tmp_path / "eval"))
    assert pipeline.postprocess.median_nm == 15.0 and pipeline.median_footprint() == (1, 3, 3)


def test_choose_py_stores_the_chosen_block_in_a_copy_and_replaces_nothing(
    tiny_checkpoint, tmp_path, capsys
):
    """choose.py: the search on any checkpoint later; the source keeps its own block."""
    import hashlib

    from tests.conftest import run_script

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    before = digest(tiny_checkpoint)
    copy = tmp_path / "chosen.ckpt"
    args = [f"ckpt_path={tiny_checkpoint}", f"output_ckpt={copy}"]
    args += ["settings_search.median_sides=[3]", "settings_search.ttas=[none]"]
    args += ["settings_search.thresholds=[0.4,0.6]"]  # + 0.5, always searched
    code, err = run_script("choose.py", args, tmp_path, capsys)
    assert code == 0, err
    assert digest(tiny_checkpoint) == before
    block = torch.load(copy, weights_only=False)["emseg_config"]["evaluation"]
    record = json.loads((tmp_path / "hydra" / "settings_search.json").read_text())
    assert record["evaluation"] == block and record["stored_in"] == str(copy)
    assert len(record["candidates"]) == 2 * 2 * 3  # (border 32, 0) x (off, median 3) x 3
    scores = [c["fg_iou"] for c in record["candidates"]]
    assert block["validation_fg_iou"] in scores
    assert block["validation_fg_iou"] >= max(scores) - record["search"]["margin"]
    # eval.py applies the copy's block, as it would a trained one.
    run_eval(compose_cfg("eval", ["split=val", f"ckpt_path={copy}"], tmp_path / "eval"))
    applied = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert applied["metrics"]["fg_iou"] == pytest.approx(block["validation_fg_iou"], abs=1e-9)

    # An existing output is never replaced: one clear error, both files as they were.
    written = digest(copy)
    code, err = run_script("choose.py", args, tmp_path, capsys)
    assert code == 2 and "output_ckpt" in err and "exists" in err, err
    assert "leave output_ckpt unset" in err  # choose.py's own way out
    assert digest(copy) == written and digest(tiny_checkpoint) == before
    code, err = run_script("choose.py", [f"ckpt_path={tmp_path / 'none.ckpt'}"], tmp_path, capsys)
    assert code == 2 and "none.ckpt" in err, err


def test_best_searches_widest_and_takes_any_gain(tmp_path):
    """experiment=best = fast's training + settings_search=wide, chosen after training."""
    from hydra.utils import instantiate

    cfg = compose_train(["experiment=best"], tmp_path / "run", tmp_path / "data")
    search = instantiate(cfg.settings_search)
    default = instantiate(compose_train([], tmp_path / "r", tmp_path / "d").settings_search)
    assert cfg.choose_settings is True and search.margin == 0.0
    assert set(default.ttas) < set(search.ttas) == {"none", "flips", "d4"}
    assert set(default.median_sides) < set(search.median_sides)
    fast = compose_train(["experiment=fast"], tmp_path / "run", tmp_path / "data")
    assert cfg.trainer == fast.trainer and cfg.optim == fast.optim and cfg.data == fast.data


def test_each_candidate_keeps_the_block_counts_its_score_is_pooled_from():
    probs, mask = _constructed_case()
    window = WindowSettings()
    for c in _scored([probs, probs], [mask, mask], window, [MEDIAN_OFF, MEDIAN_3], [0.5]):
        assert c.blocks.shape == (2, 3)  # one block per 12 x 48 x 48 volume
        tp, fp, fn = c.blocks.sum(axis=0)
        assert c.fg_iou == pytest.approx(tp / (tp + fp + fn))


def test_the_gain_over_the_defaults_comes_with_its_paired_interval():
    from emseg.settings_search import gain_over_defaults

    rng = np.random.default_rng(0)
    fg = rng.integers(500, 5000, 24)
    noisy = np.stack([fg * 8 // 10, fg // 10, fg - fg * 8 // 10], axis=1)
    cleaner = noisy.copy()
    cleaner[:, 1] //= 2  # half the false positives in every block
    default = Candidate(32, "none", MEDIAN_OFF, 0.5, 0.0, noisy)
    median = Candidate(32, "none", MEDIAN_3, 0.5, 0.0, cleaner)
    gain = gain_over_defaults(median, [default, median])
    assert 0 < gain["low"] <= gain["difference"] <= gain["high"]
    assert gain["blocks"] == 24 and gain["block_zyx"] == [16, 256, 256]
    assert gain_over_defaults(default, [default, median])["difference"] == 0
    assert gain_over_defaults(_candidate(0.9), [_candidate(0.8)]) is None  # no block counts


def test_an_ensemble_is_compared_with_its_best_member_on_the_same_blocks():
    from emseg.settings_search import gain_over_best_member

    def iou(blocks: np.ndarray) -> float:
        tp, fp, fn = blocks.sum(axis=0)
        return float(tp / (tp + fp + fn))

    rng = np.random.default_rng(1)
    fg = rng.integers(500, 5000, 24)
    weak = np.stack([fg * 7 // 10, fg // 5, fg - fg * 7 // 10], axis=1)
    strong = np.stack([fg * 8 // 10, fg // 10, fg - fg * 8 // 10], axis=1)
    ensemble = Candidate(32, "flips", MEDIAN_3, 0.45, iou(strong), strong.copy())
    ensemble.blocks[:, 1] //= 2  # the ensemble halves the stronger member's false positives
    ensemble = Candidate(32, "flips", MEDIAN_3, 0.45, iou(ensemble.blocks), ensemble.blocks)
    members = [
        {"validation_fg_iou": iou(weak), "validation_blocks": weak.tolist()},
        {"validation_fg_iou": iou(strong), "validation_blocks": strong.tolist()},
    ]
    gain = gain_over_best_member(ensemble, members)
    assert gain["best_member"] == 1 and gain["best_member_fg_iou"] == iou(strong)
    assert gain["difference"] == pytest.approx(ensemble.fg_iou - iou(strong))
    assert 0 < gain["interval"]["low"] <= gain["interval"]["difference"] <= gain["interval"]["high"]
    assert gain["interval"]["difference"] == pytest.approx(gain["difference"])

    # Blocks with other foreground are another hold-out: the point difference, no interval.
    shifted = strong.copy()
    shifted[:, 2] += 1
    other = [members[0], {**members[1], "validation_blocks": shifted.tolist()}]
    assert gain_over_best_member(ensemble, other)["interval"] is None
    no_blocks = [members[0], {"validation_fg_iou": iou(strong)}]
    assert gain_over_best_member(ensemble, no_blocks)["interval"] is None
    assert gain_over_best_member(ensemble, [members[0], None]) is None  # a member never chosen
