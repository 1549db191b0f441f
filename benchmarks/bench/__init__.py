"""``make bench`` (``python -m benchmarks.bench``): how close training and inference come to
what the hardware can do, measured against hand-written PyTorch baselines in the same process.

A benchmark script, not a timed test: it prints and records numbers, it asserts nothing about
them (``tests/test_bench.py`` runs ``--quick`` and checks only that every number is there and
sane). Sections, each its own module:

* :mod:`~benchmarks.bench.training`: the emseg LightningModule under ``lightning.Trainer`` against a
  plain PyTorch loop on the same tensors; FLOPs; precision and memory layout; a profile;
* :mod:`~benchmarks.bench.pipeline`: samples/s the DataModule delivers against what the model eats;
* :mod:`~benchmarks.bench.inference`: whole-volume inference against a bare forward pass, TTA,
  peak RSS (in fresh subprocesses, :mod:`~benchmarks.bench.infer_worker`), and the fg IoU of the
  inference settings and precisions on the validation hold-out (both on the trained checkpoint
  given with ``--ckpt``, skipped without one);
* :mod:`~benchmarks.bench.startup`: seconds from ``python train.py`` to the first training step.
"""
