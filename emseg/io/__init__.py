"""Volume and file I/O: every read and write of a file goes through this package.

* :mod:`~emseg.io.atomic`: whole-or-nothing writes (temporary sibling + rename);
* :mod:`~emseg.io.checkpoint`: the one checkpoint reader.
"""
