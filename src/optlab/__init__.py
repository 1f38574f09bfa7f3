"""optlab: a laboratory for optimizer science."""

__version__ = "0.1.0"
