"""``python -m benchmarks.bench``: see :mod:`benchmarks.bench.run`."""

from benchmarks.bench.run import main

raise SystemExit(main())
