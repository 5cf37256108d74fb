"""The judge: tasks, sanitising, sandboxed execution, pass@k and the results store.

Torch-free by design: judging samples never loads a model.
"""

__version__ = "0.1.0"
