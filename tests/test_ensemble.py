"""Checkpoint ensembles (emseg/ensemble.py, ensemble.py): one network, the mean probability."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from emseg.ensemble import ProbabilityMean, write_ensemble
from emseg.errors import ConfigError
from emseg.inference import InferencePipeline, model_stride
from emseg.inference.checkpoint import CheckpointError, load_checkpoint
from tests.conftest import make_volume, run_script


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _variant(source: Path, target: Path, seed: int, **data: object) -> Path:
    """A copy of ``source`` with perturbed weights (another "trained" member) and, optionally,
    other data settings."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(seed)
    for key, value in checkpoint["state_dict"].items():
        if key.startswith("net.") and value.is_floating_point() and "running_var" not in key:
            noise = torch.randn(value.shape, generator=generator)
            spread = value.std() if value.numel() > 1 else value.abs().max()
            checkpoint["state_dict"][key] = value + 0.2 * noise * (spread + 1e-3)
    config = checkpoint["emseg_config"]
    config["data"] = {**config["data"], **data}
    torch.save(checkpoint, target)
    return target


class _Strided(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.output_stride = stride
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_the_ensemble_is_the_mean_of_its_members_probabilities():
    torch.manual_seed(0)
    members = [nn.Conv2d(3, 2, 3, padding=1) for _ in range(3)]
    x = torch.randn(2, 3, 16, 24)
    ensemble = ProbabilityMean(members)
    out = ensemble(x)
    assert out.shape == (2, 1, 16, 24) and out.dtype == torch.float32
    expected = torch.stack([torch.sigmoid(m(x)[:, :1]) for m in members]).mean(0)
    assert torch.allclose(torch.sigmoid(out), expected, atol=1e-5)
    # Not the mean logit: the two differ wherever members disagree.
    mean_logit = torch.stack([m(x)[:, :1] for m in members]).mean(0)
    assert not torch.allclose(torch.sigmoid(mean_logit), expected, atol=1e-3)
    # Saturated members give a finite logit.
    saturated = ProbabilityMean([_Constant(60.0), _Constant(60.0)])(x)
    assert torch.isfinite(saturated).all()


class _Constant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], self.value)


def test_the_input_multiple_is_the_least_common_multiple_of_the_members():
    assert model_stride(ProbabilityMean([_Strided(32), _Strided(16)])) == 32
    assert model_stride(ProbabilityMean([_Strided(8), _Strided(12)])) == 24
    assert model_stride(ProbabilityMean([nn.Conv2d(1, 1, 1)])) == 1


def test_an_ensemble_checkpoint_predicts_the_mean_of_its_members(tiny_checkpoint, tmp_path):
    """Written once, loaded alone (the second member's file deleted), through the pipeline's
    sliding window and TTA: the mean of the members' own predictions."""
    second = _variant(tiny_checkpoint, tmp_path / "second.ckpt", seed=1)
    output = write_ensemble([tiny_checkpoint, second], tmp_path / "ensemble.ckpt")
    volume = make_volume(depth=4, size=80, seed=3)[0]

    def predict(path: Path) -> np.ndarray:
        pipeline = InferencePipeline(load_checkpoint(path))
        return np.stack(list(pipeline.probabilities(volume)))

    members = [predict(tiny_checkpoint), predict(second)]
    assert np.abs(members[0] - members[1]).max() > 1e-3  # two different members
    second.unlink()
    loaded = load_checkpoint(output)
    assert isinstance(loaded.net, ProbabilityMean) and len(loaded.net.members) == 2
    assert "evaluation" not in loaded.config
    assert loaded.config["ensemble"]["members"] == [str(tiny_checkpoint), str(second)]
    np.testing.assert_allclose(predict(output), (members[0] + members[1]) / 2, atol=2e-5)


def test_members_must_share_their_input_and_their_hold_out(tiny_checkpoint, tmp_path):
    other_mean = _variant(tiny_checkpoint, tmp_path / "mean.ckpt", seed=1, mean=0.1)
    with pytest.raises(ConfigError, match="normalises its input differently"):
        write_ensemble([tiny_checkpoint, other_mean], tmp_path / "a.ckpt")
    other_hold_out = _variant(tiny_checkpoint, tmp_path / "val.ckpt", seed=1, val_slices=5)
    with pytest.raises(ConfigError, match=r"different validation hold-outs \(data.val_slices"):
        write_ensemble([tiny_checkpoint, other_hold_out], tmp_path / "b.ckpt")
    with pytest.raises(ConfigError, match="at least two"):
        write_ensemble([tiny_checkpoint], tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="members: .*missing.ckpt"):
        write_ensemble([tiny_checkpoint, tmp_path / "missing.ckpt"], tmp_path / "d.ckpt")
    assert not list(tmp_path.glob("[abcd].ckpt"))  # nothing written by a refused call

    second = _variant(tiny_checkpoint, tmp_path / "second.ckpt", seed=2)
    nested = write_ensemble([tiny_checkpoint, second], tmp_path / "e.ckpt")
    with pytest.raises(ConfigError, match="is itself an ensemble"):
        write_ensemble([nested, tiny_checkpoint], tmp_path / "f.ckpt")
    before = _digest(nested)
    with pytest.raises(ConfigError, match="exists"):
        write_ensemble([tiny_checkpoint, second], nested)
    assert _digest(nested) == before


def test_ensemble_py_writes_one_checkpoint_that_choose_and_eval_run(
    tiny_checkpoint, tmp_path, capsys
):
    """The entry points end to end: ensemble.py, then choose.py's search on the shared
    hold-out and eval.py with the chosen block, as for any checkpoint."""
    second = _variant(tiny_checkpoint, tmp_path / "second.ckpt", seed=1)
    output = tmp_path / "ensemble.ckpt"
    code, err = run_script(
        "ensemble.py",
        [f"members=[{tiny_checkpoint},{second}]", f"output_ckpt={output}"],
        tmp_path / "e",
        capsys,
    )
    assert code == 0, err
    chosen = tmp_path / "chosen.ckpt"
    args = [f"ckpt_path={output}", f"output_ckpt={chosen}", "settings_search.ttas=[none]"]
    args += ["settings_search.median_sides=[3]", "settings_search.thresholds=[0.5]"]
    code, err = run_script("choose.py", args, tmp_path / "c", capsys)
    assert code == 0, err
    block = torch.load(chosen, weights_only=False)["emseg_config"]["evaluation"]
    code, err = run_script(
        "eval.py", [f"ckpt_path={chosen}", "split=val", "progress=false"], tmp_path / "v", capsys
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "v" / "hydra" / "metrics.json").read_text())["metrics"]
    assert metrics["fg_iou"] == pytest.approx(block["validation_fg_iou"], abs=1e-9)

    # A single path instead of a list: one line naming the key, exit 2, nothing written.
    code, err = run_script(
        "ensemble.py",
        [f"members={tiny_checkpoint}", f"output_ckpt={tmp_path / 'x.ckpt'}"],
        tmp_path / "x",
        capsys,
    )
    assert code == 2 and err.startswith("error: members:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.ckpt").exists()


_ONE_CANDIDATE = [
    "settings_search.ttas=[none]",
    "settings_search.median_sides=[3]",
    "settings_search.thresholds=[0.5]",
]


def _evaluation(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["emseg_config"]["evaluation"]


def _choose(source: Path, target: Path, tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    args = [f"ckpt_path={source}", f"output_ckpt={target}", *_ONE_CANDIDATE, *extra]
    return run_script("choose.py", args, tmp_path / f"choose_{target.stem}", capsys)


def test_choose_py_compares_an_ensemble_with_its_best_member(tiny_checkpoint, tmp_path, capsys):
    """Members chosen on validation, the ensemble written from them: choose.py on the
    ensemble records its gain over the better member; require_gain_over_members refuses an
    ensemble below it (nothing stored) and one whose members were never chosen."""
    second = _variant(tiny_checkpoint, tmp_path / "second.ckpt", seed=1)
    members = []
    for name, source in (("a", tiny_checkpoint), ("b", second)):
        code, err = _choose(source, tmp_path / f"{name}.ckpt", tmp_path, capsys)
        assert code == 0, err
        members.append(tmp_path / f"{name}.ckpt")
    scores = [_evaluation(m)["validation_fg_iou"] for m in members]
    ensemble = write_ensemble(members, tmp_path / "ensemble.ckpt")
    records = load_checkpoint(ensemble).config["ensemble"]["member_validation"]
    assert [r["validation_fg_iou"] for r in records] == scores
    assert all(r["validation_blocks"] is not None for r in records)

    code, err = _choose(ensemble, tmp_path / "chosen.ckpt", tmp_path, capsys)
    assert code == 0, err
    block = _evaluation(tmp_path / "chosen.ckpt")
    gain = block["validation_gain_over_best_member"]
    assert gain["best_member"] == int(np.argmax(scores))
    assert gain["best_member_fg_iou"] == max(scores)
    assert gain["difference"] == pytest.approx(block["validation_fg_iou"] - max(scores))

    # A member that scored 1.0 on validation cannot be beaten: refused, nothing stored.
    checkpoint = torch.load(ensemble, map_location="cpu", weights_only=False)
    checkpoint["emseg_config"]["ensemble"]["member_validation"][0]["validation_fg_iou"] = 1.0
    unbeatable = tmp_path / "unbeatable.ckpt"
    torch.save(checkpoint, unbeatable)
    gate = "require_gain_over_members=true"
    code, err = _choose(unbeatable, tmp_path / "refused.ckpt", tmp_path, capsys, gate)
    assert code == 2 and "below its best member's (member 0: 1.0000)" in err, err
    assert not (tmp_path / "refused.ckpt").exists()
    assert (tmp_path / "choose_refused" / "hydra" / "settings_search.json").exists()
    code, err = _choose(ensemble, tmp_path / "gated.ckpt", tmp_path, capsys, gate)
    assert code == (0 if gain["difference"] >= 0 else 2), err

    # Members without chosen settings, or a checkpoint that is not an ensemble: refused before
    # the search, in one line each.
    unchosen = write_ensemble([tiny_checkpoint, second], tmp_path / "unchosen.ckpt")
    checkpoint = torch.load(unchosen, map_location="cpu", weights_only=False)
    del checkpoint["emseg_config"]["ensemble"]["member_validation"]  # an ensemble of before
    torch.save(checkpoint, unchosen)
    code, err = _choose(unchosen, tmp_path / "x.ckpt", tmp_path, capsys, gate)
    assert code == 2 and "members [0, 1] have no settings chosen" in err, err
    code, err = _choose(members[0], tmp_path / "y.ckpt", tmp_path, capsys, gate)
    assert code == 2 and "only an ensemble checkpoint" in err, err
    assert not (tmp_path / "x.ckpt").exists() and not (tmp_path / "y.ckpt").exists()


# ONNX: a minute on 2 cores (the exporter traces both members), hence slow.
@pytest.mark.parametrize(
    ("fmt", "atol"),
    [("torchscript", 1e-5), pytest.param("onnx", 1e-4, marks=pytest.mark.slow)],
)
def test_an_ensemble_exports_as_one_network(tiny_checkpoint, tmp_path, fmt, atol):
    """export.py traces the ensemble like any network: the file alone gives its mean."""
    from emseg.export import run as run_export
    from tests.test_export import export_cfg, run_file

    second = _variant(tiny_checkpoint, tmp_path / "second.ckpt", seed=1)
    output = write_ensemble([tiny_checkpoint, second], tmp_path / "ensemble.ckpt")
    (tmp_path / "out").mkdir()
    result = run_export(export_cfg([f"ckpt_path={output}", f"format={fmt}"], tmp_path / "out"))
    x = np.random.default_rng(0).normal(size=(2, 1, 64, 96)).astype(np.float32)
    with torch.inference_mode():
        expected = load_checkpoint(output).net(torch.from_numpy(x)).numpy()
    got = run_file(Path(result["model"]), fmt, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=atol)
