"""Model Compression Studio: prune, quantize, factorize and export models, with honest numbers."""

__version__ = "0.1.0"
