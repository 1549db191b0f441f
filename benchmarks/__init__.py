"""Benchmarks of emseg, run from the repository root (``python -m benchmarks.bench``).

Not part of the installed package (``pyproject.toml`` packages ``emseg*`` only): these scripts
measure the library, they are not the library.
"""
