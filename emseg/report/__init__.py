"""Generic figures of finished runs: curves from TensorBoard event files, prediction figures.

The report generators of particular experiments (tables, their published values and targets)
are not library code: they live in the repository's ``scripts/``.
"""
