"""lmms-eval material of this repository: the embedded model's held-out benchmark as a local task.

The model side (``--model v2drop``) lives in the library, :mod:`v2drop.lmms`; see docs/lmms-eval.md.
"""
