"""codediff: do masked-diffusion code models learn more from scarce data than autoregressive ones?

Importing this package is cheap and torch-free; heavy modules import torch themselves.
"""

__version__ = "0.1.0"
