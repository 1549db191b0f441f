"""The installed package holds the library only, and the Makefile's targets are thin commands.

Benchmarks (``benchmarks/``) and the experiments' report scripts (``scripts/``) live beside the
package, not in it; each ``make`` target must still expand to its commands (a dry run: nothing
is trained or evaluated here).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import setuptools
from omegaconf import OmegaConf

from emseg.resolvers import PROJECT_ROOT
from tests.conftest import CONFIG_DIR


def _packages() -> list[str]:
    """What the wheel packages: pyproject's ``[tool.setuptools.packages.find]`` applied."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    find = pyproject["tool"]["setuptools"]["packages"]["find"]
    return setuptools.find_packages(where=str(PROJECT_ROOT), include=find["include"])


def test_wheel_holds_no_benchmarks_or_experiment_reports():
    packages = _packages()
    assert "emseg" in packages and "emseg.report" in packages
    assert not [p for p in packages if not p.startswith("emseg")], packages
    assert "emseg.bench" not in packages and not (PROJECT_ROOT / "emseg" / "bench").exists()
    report = {p.stem for p in (PROJECT_ROOT / "emseg" / "report").glob("*.py")}
    assert report == {"__init__", "curves", "figures"}  # generic helpers only


def test_library_imports_neither_benchmarks_nor_scripts():
    for path in (PROJECT_ROOT / "emseg").rglob("*.py"):
        source = path.read_text()
        for name in ("benchmarks", "scripts"):
            assert f"from {name}" not in source and f"import {name}" not in source, path


def _dry_run(*args: str) -> str:
    """``make -n <args>``: the commands a target would run, none of them run."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("train", ["train.py experiment=seed_report model.encoder_weights=auto"]),
        ("test", ["-m pytest"]),
        ("bench", ["-m benchmarks.bench"]),
        ("report", ["-m scripts.reproduce_report --runs outputs/reproduce/cpu"]),
        ("quality-report", ["-m scripts.quality_report --rows experiments/quality/rows.yaml"]),
        ("quality-ablations", ["train.py -m experiment=fast_short ablation=baseline,"]),
        (
            "reproduce-report",
            [
                "train.py -m experiment=seed_report ablation=baseline,dice",
                "eval.py -m +run_name=dice,adagrad,l2,focal,sgd",
                "'ckpt_path=outputs/reproduce/cpu/${run_name}'",
                "/outputs/reproduce/cpu/${run_name}/eval'",
                "hydra.run.dir=outputs/reproduce/cpu/baseline/eval\n",
                "hydra.run.dir=outputs/reproduce/cpu/baseline/eval_naive",
                "-m scripts.reproduce_report",
            ],
        ),
        (
            "quality",
            [
                "train.py experiment=fast",
                "eval.py ckpt_path=outputs/quality/fast ",
                "hydra.run.dir=outputs/quality/fast/eval_fast",
                "-m scripts.quality_report",
            ],
        ),
        (
            "quality-best",
            [
                "choose.py ckpt_path=outputs/quality/fast settings_search=wide",
                "output_ckpt=outputs/quality/fast/best_config.ckpt",
                "eval.py ckpt_path=outputs/quality/fast/best_config.ckpt",
                "hydra.run.dir=outputs/quality/fast/eval_best",
            ],
        ),
        (
            "quality-val",
            [
                "eval.py -m ckpt_path=outputs/quality/fast split=val checkpoint_settings=false",
                "val_choice=border32,border0,",
                "hydra.sweep.dir=outputs/quality/fast/val_choices",
                "hydra.sweep.subdir='${hydra.runtime.choices.val_choice}'",
            ],
        ),
    ],
)
def test_make_targets_expand(target, expected):
    commands = _dry_run(target)
    for text in expected:
        assert text in commands, (target, text, commands)
    assert "python -m emseg.model" not in commands and "emseg.inference.settings" not in commands


def test_bench_passes_its_checkpoint():
    assert "--ckpt /x/best.ckpt" in _dry_run("bench", "CKPT=/x/best.ckpt")


def test_quality_snapshots_sweep_the_snapshot_checkpoints(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("snapshot-epoch007", "snapshot-epoch015", "best-epoch015-fg_iou0.8000"):
        (checkpoints / f"{name}.ckpt").touch()
    commands = _dry_run("quality-snapshots", f"QUALITY_RUN={tmp_path / 'run'}")
    assert "+snapshot=snapshot-epoch007,snapshot-epoch015 " in commands
    assert f"'hydra.sweep.subdir={tmp_path}/run/eval_fast_snapshots/${{snapshot}}'" in commands


def _val_choices() -> list[str]:
    line = next(line for line in _dry_run("quality-val").splitlines() if "val_choice=" in line)
    return line.split("val_choice=", 1)[1].split()[0].split(",")


def _flat(node: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_every_val_choice_composes_to_inference_changes_only():
    """Each candidate of make quality-val is a conf/val_choice file that changes only
    conf/inference and conf/postprocess keys (border32, the default, none)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    choices = _val_choices()
    files = {p.stem for p in (PROJECT_ROOT / "conf" / "val_choice").glob("*.yaml")}
    assert set(choices) == files and "border32" in choices
    GlobalHydra.instance().clear()
    changed = {}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        base = _flat(OmegaConf.to_container(compose("eval", ["ckpt_path=x"])))
        for choice in choices:
            cfg = compose("eval", ["ckpt_path=x", f"val_choice={choice}"])
            flat = _flat(OmegaConf.to_container(cfg))
            changed[choice] = {k for k in base.keys() | flat.keys() if base.get(k) != flat.get(k)}
    GlobalHydra.instance().clear()
    assert changed["border32"] == set()
    assert changed["border0_median7_flips"] == {
        "inference.border_pad",
        "inference.tta",
        "postprocess.median_size",
    }
    for choice, keys in changed.items():
        assert (
            keys
            and all(k.startswith(("inference.", "postprocess.")) for k in keys)
            or (choice == "border32")
        ), (choice, keys)


def test_the_ensemble_target_evaluates_only_an_ensemble_that_beats_its_members():
    commands = _dry_run("quality-ensemble", "ENSEMBLE_MEMBERS=a.ckpt b.ckpt", "ENSEMBLE_DIR=e")
    commands = commands.replace("\\\n", " ")  # continuation lines joined
    choose = next(line for line in commands.splitlines() if "choose.py" in line)
    assert "ckpt_path=e/ensemble.ckpt settings_search=wide" in choose
    assert "require_gain_over_members=true" in choose
    # The gate and the evaluation are separate commands: make stops at the refusal.
    assert commands.index("choose.py") < commands.index("eval.py ckpt_path=e/best_config.ckpt")
