"""BioImage Model Zoo packages (issue 21): export.py format=bioimageio, validated by
bioimageio.core's model test, and packages run by predict.py model=<package> through emseg's
own pipeline; every bad input in one line.

The tiny model's package (pytorch_state_dict + torchscript) is built and tested once per
module (~20-40 s on two busy cores); the three-format package is marked slow.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from omegaconf import open_dict

from emseg.errors import ConfigError
from emseg.export import run as run_export
from emseg.inference import CheckpointError, load_checkpoint
from emseg.inference.checkpoint import load_model
from emseg.zoo import architecture, is_package, model_argument
from emseg.zoo.processing import PackagePreprocessing, apply_steps, check_preprocessing
from tests.conftest import run_script
from tests.test_export import export_cfg

# Windows of 128 px: halo 32, minimum input 96 = the synthetic volume's side.
TINY_ZOO = [
    "format=bioimageio",
    "inference.tile_size=128",
    "bioimageio.authors=[{name: Test Author, affiliation: Test Lab}]",
]


@pytest.fixture(scope="module")
def tiny_package(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint's package (pytorch_state_dict + torchscript), bioimageio.core-tested."""
    out = tmp_path_factory.mktemp("zoo")
    overrides = [f"ckpt_path={tiny_checkpoint}", *TINY_ZOO]
    result = run_export(export_cfg([*overrides, "bioimageio.converted_weights=[torchscript]"], out))
    assert result["status"] == "passed"
    return Path(result["package"])


def _rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as archive:
        return yaml.safe_load(archive.read("rdf.yaml"))


def _rewrite(package: Path, out: Path, edit=None, files: dict[str, bytes] | None = None) -> Path:
    """A copy of ``package`` with its rdf.yaml changed by ``edit`` and some files replaced."""
    with zipfile.ZipFile(package) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    rdf = yaml.safe_load(members["rdf.yaml"])
    if edit is not None:
        edit(rdf)
    members.update(files or {})
    _update_hashes(
        rdf, {name: hashlib.sha256(data).hexdigest() for name, data in (files or {}).items()}
    )
    members["rdf.yaml"] = yaml.safe_dump(rdf, sort_keys=False).encode()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out


def _update_hashes(node, hashes: dict[str, str]) -> None:
    """Give every ``{source, sha256}`` entry of a replaced file the new file's hash."""
    if isinstance(node, dict):
        if node.get("source") in hashes and "sha256" in node:
            node["sha256"] = hashes[node["source"]]
        for value in node.values():
            _update_hashes(value, hashes)
    elif isinstance(node, list):
        for value in node:
            _update_hashes(value, hashes)


def _predict(args: list[str], tmp_path: Path, capsys) -> tuple[int, str]:
    return run_script("predict.py", [*args, "progress=false"], tmp_path, capsys)


def test_package_is_valid_and_predicts_like_its_checkpoint(
    tiny_package, tiny_checkpoint, synthetic_data_dir, tmp_path, capsys
):
    rdf = _rdf(tiny_package)
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] == "build_unet"
    (raw,) = rdf["inputs"]
    assert [a.get("id", a["type"]) for a in raw["axes"]] == ["batch", "channel", "y", "x"]
    assert raw["axes"][1]["channel_names"] == ["z"]  # the tiny run is 2D (context 0)
    assert raw["axes"][2]["size"] == {"min": 96, "step": 32} and raw["axes"][2]["scale"] == 5.0
    steps = [step["id"] for step in raw["preprocessing"]]
    assert steps == [
        "ensure_dtype",
        "scale_linear",
        "fixed_zero_mean_unit_variance",
        "ensure_dtype",
    ]
    assert rdf["outputs"][0]["postprocessing"][0]["id"] == "sigmoid"
    assert rdf["outputs"][0]["axes"][2]["halo"] == 32
    assert rdf["authors"] == [{"name": "Test Author", "affiliation": "Test Lab"}]
    assert {c.get("doi") for c in rdf["cite"]} >= {"10.1109/TMI.2011.2171705"}
    report = json.loads(tiny_package.with_name("model.test.json").read_text())
    assert report["status"] == "passed"
    with zipfile.ZipFile(tiny_package) as archive:
        assert {"README.md", "cover.png", "emseg_unet.py", "test_input.npy"} <= set(
            archive.namelist()
        )
        test_input = np.load(io.BytesIO(archive.read("test_input.npy")))
    real = tifffile.imread(synthetic_data_dir / "epfl" / "testing.tif")
    assert test_input.dtype == np.uint8 and test_input.shape == (1, 1, 96, 96)
    assert np.array_equal(test_input[0, 0], real[len(real) // 2])  # a real crop, middle slice

    image = synthetic_data_dir / "epfl" / "testing.tif"
    common = [f"input={image}", "inference.precision=32-true"]
    outputs = {}
    for name, model in (
        ("package", f"model={tiny_package}"),
        ("ckpt", f"ckpt_path={tiny_checkpoint}"),
    ):
        outputs[name] = tmp_path / f"{name}.tif"
        code, err = _predict([model, *common, f"output={outputs[name]}"], tmp_path, capsys)
        assert code == 0, err
    package, ckpt = (tifffile.imread(outputs[n]).astype(int) for n in ("package", "ckpt"))
    # The same network and normalisation (bioimage.io adds eps 1e-6 to the std): at most one
    # uint8 step apart, on almost no voxels.
    assert np.abs(package - ckpt).max() <= 1 and (package != ckpt).mean() < 1e-3


def test_rdf_yaml_of_an_unpacked_package_runs(tiny_package, synthetic_data_dir, tmp_path, capsys):
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(tiny_package) as archive:
        archive.extractall(unpacked)
    checkpoint = load_model(unpacked / "rdf.yaml")
    assert checkpoint.preprocessing.context == 0
    assert not any(checkpoint.config["evaluation"].values())  # the tiny run chose none
    assert checkpoint.config["data"]["voxel_size"] == [5.0, 5.0, 5.0]
    out = tmp_path / "probs.tif"
    image = synthetic_data_dir / "epfl" / "testing.tif"
    code, err = _predict(
        [f"model={unpacked / 'rdf.yaml'}", f"input={image}", f"output={out}"], tmp_path, capsys
    )
    assert code == 0, err and out.exists()


@pytest.mark.slow
def test_package_with_all_weight_formats_passes(tiny_checkpoint, tmp_path):
    result = run_export(export_cfg([f"ckpt_path={tiny_checkpoint}", *TINY_ZOO], tmp_path))
    assert result["status"] == "passed"
    assert set(_rdf(Path(result["package"]))["weights"]) == {
        "pytorch_state_dict",
        "torchscript",
        "onnx",
    }


def test_architecture_source_builds_emseg_network(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    model = checkpoint.config["model"]
    kwargs = {
        k: model[k] for k in ("encoder_name", "classes", "decoder_use_norm", "decoder_channels")
    }
    net = architecture.build_unet(in_channels=checkpoint.preprocessing.in_channels, **kwargs)
    net.load_state_dict(checkpoint.net.state_dict(), strict=True)
    x = torch.randn(1, checkpoint.preprocessing.in_channels, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(net.eval()(x), checkpoint.net(x), atol=1e-6)


def test_processing_follows_bioimageio_formulas():
    raw = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5) * 5
    steps = check_preprocessing(
        [
            ("ensure_dtype", {"dtype": "float32"}),
            ("scale_linear", {"gain": [0.5, 0.5], "offset": 1.0}),
            ("fixed_zero_mean_unit_variance", {"mean": 10.0, "std": 4.0}),
        ],
        "test",
    )
    expected = ((raw.astype(np.float64) * 0.5 + 1.0) - 10.0) / (4.0 + 1e-6)
    assert np.allclose(apply_steps(raw, steps), expected, atol=1e-5)
    measured = check_preprocessing(
        [
            ("scale_range", {"min_percentile": 1, "max_percentile": 99}),
            ("clip", {"min": 0, "max": 1}),
        ],
        "test",
    )
    pre = PackagePreprocessing.from_steps(measured, context=0).for_volume(raw)
    low, high = np.percentile(raw.astype(np.float32), (1, 99))
    assert np.allclose(pre(raw), np.clip((raw - low) / (high - low + 1e-6), 0, 1), atol=1e-6)
    with pytest.raises(ConfigError, match="different gain per channel"):
        check_preprocessing([("scale_linear", {"gain": [1.0, 2.0]})], "p.zip")
    with pytest.raises(ConfigError, match="p.zip: its preprocessing step 'stardist'"):
        check_preprocessing([("stardist", {})], "p.zip")


def test_model_argument():
    assert model_argument(["predict.py", "model=a.zip", "input=x"]) == [
        "predict.py",
        "ckpt_path=a.zip",
        "input=x",
    ]
    assert model_argument(["eval.py", "ckpt_path=c.ckpt"]) == ["eval.py", "ckpt_path=c.ckpt"]
    assert is_package("dir/rdf.yaml") and is_package("m.ZIP") and not is_package("best.ckpt")
    for argv in (["p", "model=a.zip", "ckpt_path=b.ckpt"], ["p", "model=best.ckpt"]):
        with pytest.raises(SystemExit) as exit_info:
            model_argument(argv)
        assert exit_info.value.code == 2


def _one_error_line(code: int, err: str, *words: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]


def test_export_bad_input(tiny_checkpoint, tmp_path, capsys):
    base = [f"ckpt_path={tiny_checkpoint}", "format=bioimageio", "bioimageio.test=false"]
    with pytest.raises(ConfigError, match="bioimageio.authors"):
        run_export(export_cfg(base, tmp_path))
    authors = "bioimageio.authors=[{name: A}]"
    stored = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    for key, message in (("voxel_size", "data.voxel_size"), ("mean", "data.mean")):
        changed = json.loads(json.dumps(stored["emseg_config"]))
        del changed["data"][key]
        ckpt = tmp_path / f"no_{key}.ckpt"
        torch.save({**stored, "emseg_config": changed}, ckpt)
        overrides = [f"ckpt_path={ckpt}", "format=bioimageio", authors, "bioimageio.test=false"]
        with pytest.raises((ConfigError, CheckpointError), match=message):
            run_export(export_cfg(overrides, tmp_path))
    existing = tmp_path / "model.zip"
    existing.write_bytes(b"keep")
    code, err = run_script("export.py", [*base, authors, f"output={existing}"], tmp_path, capsys)
    _one_error_line(code, err, "already exists", "overwrite=true")
    assert existing.read_bytes() == b"keep"


def _bad_packages(package: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Packages emseg must refuse, and a word of each refusal."""
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(package.read_bytes()[:2000])
    not_zoo = tmp_path / "other.zip"
    with zipfile.ZipFile(not_zoo, "w") as archive:
        archive.writestr("notes.txt", "not a model")

    def three_d(rdf):
        rdf["inputs"][0]["axes"].insert(
            2, {"type": "space", "id": "z", "size": {"min": 8, "step": 8}}
        )

    def two_outputs(rdf):
        second = json.loads(json.dumps(rdf["outputs"][0]))
        second["id"] = "boundaries"
        rdf["outputs"].append(second)

    def fixed_size(rdf):
        for axis in rdf["inputs"][0]["axes"][2:]:
            axis["size"] = 96

    with zipfile.ZipFile(package) as archive:
        expected = np.load(io.BytesIO(archive.read("test_output.npy")))
    wrong = io.BytesIO()
    np.save(wrong, 1.0 - expected)
    return {
        "corrupt": (corrupt, "not a readable bioimage.io package"),
        "not_zoo": (not_zoo, "not a readable bioimage.io package"),
        "3d": (_rewrite(package, tmp_path / "3d.zip", three_d), "3D model"),
        "outputs": (_rewrite(package, tmp_path / "two.zip", two_outputs), "multi-output"),
        "fixed": (_rewrite(package, tmp_path / "fixed.zip", fixed_size), "fixed at 96"),
        "test_tensors": (
            _rewrite(package, tmp_path / "wrong.zip", files={"test_output.npy": wrong.getvalue()}),
            "does not give its test output",
        ),
    }


def test_predict_refuses_packages_it_cannot_run(tiny_package, synthetic_data_dir, tmp_path, capsys):
    image = synthetic_data_dir / "epfl" / "testing.tif"
    for name, (package, word) in _bad_packages(tiny_package, tmp_path).items():
        out = tmp_path / f"{name}.tif"
        code, err = _predict(
            [f"model={package}", f"input={image}", f"output={out}"], tmp_path, capsys
        )
        _one_error_line(code, err, "model:", str(package.name), word)
        assert not out.exists()
    code, err = _predict(
        [f"model={tmp_path / 'missing.zip'}", f"input={image}", "output=x.tif"], tmp_path, capsys
    )
    _one_error_line(code, err, "does not exist")


@pytest.mark.slow
def test_percentile_package_through_blockwise(tiny_cfg, synthetic_data_dir, tmp_path, capsys):
    """data.percentiles -> scale_range + clip (bioimageio.core passes it, with the percentiles of
    its test crop); emseg measures them on the volume, predicts as the checkpoint does, also
    blockwise (the workers get the package as ckpt_path)."""
    from emseg.train import run as run_train

    cfg = tiny_cfg("data.percentiles=[1,99.8]", "data.context=1", "logger=none")
    with open_dict(cfg):
        cfg.test_after_fit = False
    run_train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    (tmp_path / "zoo").mkdir()
    overrides = [f"ckpt_path={ckpt}", *TINY_ZOO, "bioimageio.converted_weights=[torchscript]"]
    result = run_export(export_cfg(overrides, tmp_path / "zoo"))
    assert result["status"] == "passed"
    steps = [s["id"] for s in _rdf(Path(result["package"]))["inputs"][0]["preprocessing"]]
    assert steps[1:3] == ["scale_range", "clip"]
    image = synthetic_data_dir / "epfl" / "testing.tif"
    common = [f"input={image}", "inference.precision=32-true", "torch_threads=1"]
    runs = {
        "ckpt.tif": f"ckpt_path={ckpt}",
        "package.tif": f"model={result['package']}",
        "package.zarr": f"model={result['package']}",
    }
    for name, model in runs.items():
        extra = ["blockwise.block_slices=4", "blockwise.chunks=[1,96,96]"] if "zarr" in name else []
        code, err = _predict(
            [model, *common, *extra, f"output={tmp_path / name}"], tmp_path, capsys
        )
        assert code == 0, err
    import zarr

    ckpt_probs = tifffile.imread(tmp_path / "ckpt.tif").astype(int)
    package_probs = tifffile.imread(tmp_path / "package.tif").astype(int)
    store = np.asarray(zarr.open(str(tmp_path / "package.zarr" / "probabilities" / "0"), mode="r"))
    assert np.abs(package_probs - ckpt_probs).max() <= 1
    assert (package_probs != ckpt_probs).mean() < 1e-3
    assert np.array_equal(store.astype(int), package_probs)
