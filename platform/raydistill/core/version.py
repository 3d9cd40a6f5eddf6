"""The package version, in the core so that artifacts can record it without importing upwards."""
__version__ = "0.1.0"
