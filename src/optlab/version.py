"""optlab's version (what every run records as its provenance)."""

__version__ = "0.1.0"
