"""codediff: do masked-diffusion code models learn more from scarce data than autoregressive ones?

Importing this package is cheap and torch-free; heavy modules import torch themselves.

One namespace: the product's top-level folders `harness/`, `reports/` and `tasks/` are installed as
`codediff.harness`, `codediff.reports` and `codediff.tasks` (pyproject's package-dir). In a source
checkout that is not installed (e.g. `python -m codediff.cli` from the repository root on a GPU
machine) the same names resolve through the checkout's root, added to this package's path below.
"""

import os as _os

__version__ = "0.1.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "harness")) and _os.path.isfile(
        _os.path.join(_root, "harness", "__init__.py")):
    __path__.append(_root)  # noqa: F821 - a package's __path__ is set by the import system
