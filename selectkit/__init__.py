"""selectkit: spend training compute only on the examples that still teach the model something."""

__version__ = "0.1.0"
