"""``python -m benchmarks.gpu_check``: see :mod:`benchmarks.gpu_check.run`."""

from benchmarks.gpu_check.run import main

raise SystemExit(main())
