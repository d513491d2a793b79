"""voxfast: fast speaker-verification training and evaluation."""

__version__ = "0.1.0"
