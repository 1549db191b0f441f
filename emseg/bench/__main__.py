"""``python -m emseg.bench``: see :mod:`emseg.bench.run`."""

from emseg.bench.run import main

raise SystemExit(main())
