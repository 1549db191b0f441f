"""What the GPU machine must be given: wheels of the packages it lacks and a compressed subset of
the EPFL training volume, inside the 64 MiB that travel with the repository.

``python -m benchmarks.gpu_check.stage [--data-dir data] [--out outputs/gpu_stage]`` (``make
gpu-stage``) writes::

    <out>/wheels/*.whl                   hydra-core, omegaconf, antlr4-python3-runtime,
                                         segmentation-models-pytorch (pure-Python wheels, the
                                         versions installed here)
    <out>/data/epfl/training.tif.xz      the LAST ``slices`` slices of training.tif (xz, lossless)
    <out>/data/epfl/training_groundtruth.tif.xz
    <out>/manifest.json                  slices kept, SHA-256 of every file, sizes, budget

Why the last slices: the validation hold-out is the last 16 slices of the training volume
(``data.val_slices``), so the GPU run validates on exactly the slices every CPU run validated
on, and trains on the z-contiguous block before them (2.5D context stays contiguous). The EM
images compress only to ~76 % (noise), so the whole 165-slice volume (93 MiB compressed) cannot
travel; the test volume is not needed there (it is evaluated on the CPU afterwards, from the
returned weights). ``slices=auto`` keeps as many slices as fit the budget after the repository's
own files, the wheels and a margin.

:func:`unpack` (run on the GPU machine by :mod:`benchmarks.gpu_check.run`) restores the TIFFs
into a data directory laid out like ``data/`` and checks their SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from emseg.errors import ConfigError, DataError
from emseg.io.atomic import write_json_atomic
from emseg.resolvers import PROJECT_ROOT

__all__ = [
    "BUDGET_BYTES",
    "WHEELS",
    "build",
    "main",
    "tree_bytes",
    "unpack",
]

MIB = 2**20
# What travels to the GPU machine: tracked + untracked-not-ignored files + carried paths.
BUDGET_BYTES = 64 * MIB
# Left free for files others add to the working tree between staging and the GPU run.
MARGIN_BYTES = 6 * MIB
# The packages emseg needs that the GPU machine's image lacks (its timm, huggingface_hub,
# safetensors, PyYAML, packaging, Pillow, torchvision and tqdm cover smp's other needs).
WHEELS = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "segmentation-models-pytorch")
# The training volume's files, staged in this order (the mask first: it is tiny).
VOLUMES = ("training_groundtruth.tif", "training.tif")
MIN_SLICES = 24
XZ_PRESET = 6


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_bytes(root: Path = PROJECT_ROOT, exclude: Path | None = None) -> int:
    """Bytes of the working tree that travels: files git tracks plus untracked files it does
    not ignore, except those under ``exclude`` (counted separately)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    total = 0
    skip = exclude.resolve() if exclude is not None else None
    for name in filter(None, listed):
        path = (root / name.decode()).resolve()
        if skip is not None and path.is_relative_to(skip):
            continue
        if path.is_file():
            total += path.stat().st_size
    return total


def fetch_wheels(dest: Path, packages: tuple[str, ...] = WHEELS) -> list[dict[str, Any]]:
    """Wheels of ``packages`` at the versions installed here, via ``pip wheel --no-deps`` (a
    download, or a build for sdist-only releases such as antlr4-python3-runtime 4.9.3).

    Raises:
        ConfigError: pip failed, or a wheel is not pure Python (it would not install there).
    """
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in packages]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest), *pins],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ConfigError(f"pip wheel {' '.join(pins)} failed: {done.stderr.strip()[-500:]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(packages):
        found = ", ".join(w.name for w in wheels)
        raise ConfigError(f"expected {len(packages)} wheels in {dest}, found: {found}")
    impure = [w.name for w in wheels if not w.name.endswith("-py3-none-any.whl")]
    if impure:
        raise ConfigError(
            f"not pure-Python wheels (would not install on the GPU machine): {impure}"
        )
    return [{"name": w.name, "bytes": w.stat().st_size, "sha256": _sha256(w)} for w in wheels]


def _compress_slices(source: Path, dest: Path, first: int) -> dict[str, Any]:
    """Slices ``first:`` of the TIFF ``source`` as an xz-compressed uncompressed TIFF."""
    with tifffile.TiffFile(source) as tif:
        depth = len(tif.pages)
        stack = np.stack([tif.pages[z].asarray() for z in range(first, depth)])
    raw = io.BytesIO()
    tifffile.imwrite(raw, stack)
    data = raw.getvalue()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(dest, "wb", preset=XZ_PRESET) as handle:
        handle.write(data)
    return {
        "name": dest.name,
        "source": source.name,
        "source_slices": depth,
        "z_range": [first, depth],
        "shape": list(stack.shape),
        "dtype": str(stack.dtype),
        "bytes": dest.stat().st_size,
        "sha256": _sha256(dest),
        "tif_sha256": hashlib.sha256(data).hexdigest(),
    }


def _volume_depth(path: Path) -> int:
    if not path.is_file():
        raise DataError(f"{path}: file not found (make data, or --data-dir)")
    with tifffile.TiffFile(path) as tif:
        return len(tif.pages)


def build(
    data_dir: Path,
    out: Path,
    slices: int | str = "auto",
    budget_bytes: int = BUDGET_BYTES,
    with_wheels: bool = True,
) -> dict[str, Any]:
    """Write the stage directory ``out`` (module docstring) and return its manifest.

    Args:
        data_dir: a directory laid out like ``data/`` (``epfl/training.tif`` ...).
        slices: how many of the last training slices to keep, or ``"auto"``: as many as fit
            ``budget_bytes`` after the working tree (without ``out``), the wheels and a margin
            (at least :data:`MIN_SLICES`).
        with_wheels: fetch the wheels (off for the CPU dry run, whose packages are here).

    Raises:
        ConfigError: a bad ``slices``, or the stage does not fit the budget.
        DataError: a training file is missing.
    """
    epfl = Path(data_dir) / "epfl"
    depth = _volume_depth(epfl / "training.tif")
    if depth != _volume_depth(epfl / "training_groundtruth.tif"):
        raise DataError(f"{epfl}: training.tif and training_groundtruth.tif differ in depth")
    if slices != "auto" and (isinstance(slices, bool) or not isinstance(slices, int)):
        raise ConfigError(f"--slices must be a positive integer or auto, got {slices!r}")
    if slices != "auto" and not 1 <= slices <= depth:
        raise ConfigError(f"--slices must be in 1..{depth} (the training depth), got {slices}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wheels = fetch_wheels(out / "wheels") if with_wheels else []
    tree = tree_bytes(exclude=out)
    free = budget_bytes - MARGIN_BYTES - tree - sum(w["bytes"] for w in wheels)
    files = [_compress_slices(epfl / VOLUMES[0], out / "data" / "epfl" / f"{VOLUMES[0]}.xz", 0)]
    free -= files[0]["bytes"]
    auto = slices == "auto"
    if auto:
        # Estimate from a sample of the last slices (~0.76 of raw for EM noise), then check.
        probe = _compress_slices(epfl / VOLUMES[1], out / "probe.xz", max(depth - 8, 0))
        (out / "probe.xz").unlink()
        per_slice = probe["bytes"] / (depth - max(depth - 8, 0))
        slices = int(min(depth, max(free // (per_slice * 1.03), 1)))
    image = _compress_slices(
        epfl / VOLUMES[1], out / "data" / "epfl" / f"{VOLUMES[1]}.xz", depth - slices
    )
    files[0] = _compress_slices(
        epfl / VOLUMES[0], out / "data" / "epfl" / f"{VOLUMES[0]}.xz", depth - slices
    )
    files.append(image)
    staged = sum(f["bytes"] for f in files) + sum(w["bytes"] for w in wheels)
    manifest = {
        "slices": int(slices),
        "training_depth": depth,
        "files": files,
        "wheels": wheels,
        "stage_bytes": staged,
        "tree_bytes_without_stage": tree,
        "budget_bytes": budget_bytes,
        "margin_bytes": MARGIN_BYTES,
    }
    write_json_atomic(out / "manifest.json", manifest)
    if tree + staged > budget_bytes - MARGIN_BYTES:
        raise ConfigError(
            f"the stage ({staged / MIB:.1f} MiB) and the working tree ({tree / MIB:.1f} MiB) "
            f"exceed {budget_bytes / MIB:.0f} MiB less a {MARGIN_BYTES / MIB:.0f} MiB margin: "
            "stage fewer slices (--slices)"
        )
    if auto and slices < MIN_SLICES:
        raise ConfigError(
            f"only {slices} training slices fit the budget (at least {MIN_SLICES}: 16 are the "
            "validation hold-out): make the working tree smaller"
        )
    return manifest


def unpack(stage: Path, dest: Path) -> dict[str, Any]:
    """Decompress the staged volumes into ``dest/epfl/`` (a data directory), checking their
    SHA-256 against the manifest; return the manifest.

    Raises:
        DataError: no manifest, or a file missing or not what was staged.
    """
    manifest_path = Path(stage) / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: not found (make gpu-stage builds the stage)")
    manifest = json.loads(manifest_path.read_text())
    (dest / "epfl").mkdir(parents=True, exist_ok=True)
    for entry in manifest["files"]:
        packed = Path(stage) / "data" / "epfl" / entry["name"]
        if not packed.is_file() or _sha256(packed) != entry["sha256"]:
            raise DataError(f"{packed}: missing or not the staged file (rerun make gpu-stage)")
        target = dest / "epfl" / entry["name"].removesuffix(".xz")
        digest = hashlib.sha256()
        with lzma.open(packed, "rb") as source, open(target, "wb") as sink:
            for block in iter(lambda: source.read(4 * MIB), b""):
                digest.update(block)
                sink.write(block)
        if digest.hexdigest() != entry["tif_sha256"]:
            raise DataError(f"{packed}: decompressed content differs from what was staged")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.gpu_check.stage``: build the stage, print its manifest summary."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check.stage", description=__doc__
    )
    parser.add_argument("--data-dir", type=Path, default=PROJECT_ROOT / "data")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "outputs/gpu_stage")
    parser.add_argument("--slices", default="auto", help="last training slices to keep, or auto")
    parser.add_argument("--no-wheels", action="store_true", help="skip the wheels (CPU tests)")
    args = parser.parse_args(argv)
    slices: int | str = args.slices
    if slices != "auto":
        try:
            slices = int(slices)
        except ValueError:
            parser.error(f"--slices must be a positive integer or auto, got {slices!r}")
    try:
        manifest = build(args.data_dir, args.out, slices, with_wheels=not args.no_wheels)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = manifest["stage_bytes"] + manifest["tree_bytes_without_stage"]
    print(
        f"staged {args.out}: the last {manifest['slices']} of {manifest['training_depth']} "
        f"training slices, {len(manifest['wheels'])} wheels, {manifest['stage_bytes'] / MIB:.1f} "
        f"MiB (+ {manifest['tree_bytes_without_stage'] / MIB:.1f} MiB working tree = "
        f"{total / MIB:.1f} of {manifest['budget_bytes'] / MIB:.0f} MiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
