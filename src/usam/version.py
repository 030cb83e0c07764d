"""The one place usam's version is written; ``pyproject.toml`` and :data:`usam.__version__` read it."""

__version__ = "0.2.0"
