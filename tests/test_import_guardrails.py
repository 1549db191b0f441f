"""Inference and post-processing stay independent of training code (AST check, as in PyTC).

``emseg/inference`` and ``emseg/postprocess.py`` must never import Lightning or the training
modules, so they can run wherever a checkpoint and numpy/torch are; post-processing is plain
numpy/scipy and must not import torch either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from emseg.resolvers import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "emseg"
TRAINING = ("lightning", "pytorch_lightning", "emseg.train", "emseg.module", "emseg.callbacks")
GUARDED = {
    **dict.fromkeys(sorted((PACKAGE / "inference").glob("*.py")), TRAINING),
    PACKAGE / "postprocess.py": (*TRAINING, "torch", "monai"),
    # The object tools (and their blockwise workers) are numpy / scipy / scikit-image.
    **dict.fromkeys(sorted((PACKAGE / "objects").glob("*.py")), (*TRAINING, "torch")),
    PACKAGE / "resolvers.py": ("torch",),
}


def imported_modules(path: Path, root: Path = PROJECT_ROOT) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def forbidden(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", list(GUARDED), ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_no_training_imports(path):
    bad = sorted(n for n in imported_modules(path) if forbidden(n, GUARDED[path]))
    assert not bad, f"{path.relative_to(PROJECT_ROOT)} imports {bad}"


def test_the_check_sees_imports(tmp_path):
    sample = tmp_path / "emseg" / "inference" / "probe.py"
    sample.parent.mkdir(parents=True)
    sample.write_text("import lightning as L\nfrom ..train import run\nfrom emseg import module\n")
    names = imported_modules(sample, root=tmp_path)
    assert {"lightning", "emseg.train", "emseg.train.run", "emseg.module"} <= names
