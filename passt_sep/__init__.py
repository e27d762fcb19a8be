"""passt-sep: privilege-separated user-mode networking (passt/pasta in Python)."""

__version__ = "0.1.0"
