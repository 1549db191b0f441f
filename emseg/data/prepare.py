"""Prepare the data directory: ``python -m emseg.data.prepare [--source DIR] [--dest DIR]``.

With a local copy (``../shared/data`` by default) the files are verified against its
``SHA256SUMS`` and symlinked into the destination; the source is never modified. Without one,
the EPFL volumes are downloaded from the EPFL CVLab site, written under a temporary name,
checked (readable, expected shape, binary masks) and renamed; their SHA-256 is recorded in
``SHA256SUMS.downloaded`` and verified against it on later runs.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import urllib.request
from pathlib import Path

from emseg.errors import DataError, EmsegError
from emseg.io import read_image, read_mask
from emseg.resolvers import PROJECT_ROOT

log = logging.getLogger("emseg.data.prepare")

EPFL_URL = (
    "https://documents.epfl.ch/groups/c/cv/cvlab-unit/www/data/%20ElectronMicroscopy_Hippocampus"
)
EPFL_FILES = ["training.tif", "training_groundtruth.tif", "testing.tif", "testing_groundtruth.tif"]
LUCCHIPP_PAGE = "https://sites.google.com/view/connectomics/"
EXPECTED_SHAPE = (165, 768, 1024)


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_sums(path: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style file into {relative path: hex digest}."""
    sums = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise DataError(f"{path}: line {number} is not '<sha256>  <file>': {line!r}")
            digest, name = parts
            sums[name.strip().lstrip("*")] = digest
    return sums


def verify(root: Path, sums: dict[str, str]) -> None:
    """Raise DataError naming the first file that is missing or whose checksum differs."""
    for name, expected in sums.items():
        path = root / name
        if not path.exists():
            raise DataError(f"{path}: listed in SHA256SUMS but missing")
        actual = sha256(path)
        if actual != expected:
            raise DataError(f"{path}: SHA-256 {actual} does not match SHA256SUMS ({expected})")
        log.info("ok  %s", name)


def link_from(source: Path, dest: Path) -> None:
    """Verify ``source`` against its SHA256SUMS and symlink every listed file into ``dest``."""
    sums = read_sums(source / "SHA256SUMS")
    verify(source, sums)
    for name in sums:
        target = (source / name).resolve()
        link = dest / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.resolve() == target:
                continue
            raise DataError(f"{link}: exists and is not a link to {target}; remove it first")
        link.symlink_to(target)
        log.info("linked %s -> %s", link, target)


def download(dest: Path) -> None:
    """Download the EPFL volumes (atomically) and record or verify their checksums."""
    epfl = dest / "epfl"
    epfl.mkdir(parents=True, exist_ok=True)
    record = dest / "SHA256SUMS.downloaded"
    known = read_sums(record) if record.exists() else {}
    for name in EPFL_FILES:
        path = epfl / name
        if not path.exists():
            tmp = path.with_suffix(".part")
            log.info("downloading %s/%s", EPFL_URL, name)
            try:
                urllib.request.urlretrieve(f"{EPFL_URL}/{name}", tmp)
            except OSError as err:
                tmp.unlink(missing_ok=True)
                raise DataError(f"could not download {name} from {EPFL_URL} ({err})") from err
            reader = read_mask if "groundtruth" in name else read_image
            shape = reader(tmp).shape
            if shape != EXPECTED_SHAPE:
                tmp.unlink()
                raise DataError(f"downloaded {name} has shape {shape}, expected {EXPECTED_SHAPE}")
            os.replace(tmp, path)
        digest = sha256(path)
        key = f"epfl/{name}"
        if key in known and known[key] != digest:
            raise DataError(f"{path}: SHA-256 {digest} differs from the recorded {known[key]}")
        known[key] = digest
    record.write_text("".join(f"{d}  {n}\n" for n, d in sorted(known.items())))
    log.warning("Lucchi++ masks are not downloaded automatically: get them from %s", LUCCHIPP_PAGE)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=PROJECT_ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--dest", type=Path, default=Path(os.environ.get("EMSEG_DATA_DIR", PROJECT_ROOT / "data"))
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if (args.source / "SHA256SUMS").exists():
            link_from(args.source, args.dest)
        else:
            log.info("no local copy at %s; downloading", args.source)
            download(args.dest)
    except EmsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("data ready in %s", args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
