"""The package version, in one place (lower layers import it from here)."""

__version__ = "0.1.0"
