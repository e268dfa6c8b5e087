"""The package version (also stamped into the compiled core)."""

__version__ = "0.1.0"
