"""``make gpu-check`` (``python -m benchmarks.gpu_check``): emseg on a CUDA GPU, checked and
measured in one command of under 8 minutes (issue 22), with a CPU dry run (``--dry-run``).

Sections, in order, each recorded in ``<out>/report.json`` as soon as it is done:

* ``gpu_tests`` (a): ``pytest -m gpu tests/test_gpu.py``: a CUDA bf16 fit of the tiny network
  and ``eval.py`` of its checkpoint on the GPU;
* ``multirun`` (b): the user's ``train.py -m loss=bce,dice optim=adam,adagrad``, a few steps
  each, four run directories checked;
* ``speed`` (c, :mod:`~benchmarks.gpu_check.speed`): Lightning / plain-loop step ratio and
  images/s at batch 4, 16 and 64 (bf16-mixed, channels_last), MFU against the bf16 peak,
  ``torch.compile``, the loader's rate against the GPU's at the recipe's batch size;
* ``experiment`` (e): ``train.py experiment=gpu`` for a fixed number of minutes (its epochs
  sized from the step time (c) measured); the best checkpoint comes back as fp16 parts
  (:mod:`~benchmarks.gpu_check.weights`) to be evaluated on the whole EPFL test volume on the
  CPU (``make gpu-eval``);
* ``inference`` (d): whole-volume inference slices/s, the pipeline and a bare forward pass.

What travels to the GPU machine is built by :mod:`~benchmarks.gpu_check.stage` (``make
gpu-stage``): the wheels it lacks and the last slices of the EPFL training volume,
xz-compressed, within the 64 MiB limit; ``benchmarks/gpu_check/device.sh`` is the command run
there. experiments/gpu/README.md records what has run where.
"""
