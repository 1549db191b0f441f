"""Experiment scripts, run from the repository root (``python -m scripts.<name>``).

Not part of the installed package (``pyproject.toml`` packages ``emseg*`` only): the report
generators of particular experiments, whose constants (published values, targets) live in data
files beside those experiments under ``experiments/``.
"""
