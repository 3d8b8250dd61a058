"""lyco-bench: an open benchmark for text-to-image customization."""

__version__ = "0.1.0"
