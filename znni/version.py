"""znni's version, alone in a module: kernel caches, tuning records and device descriptions
are keyed by it, and the modules that read it must not import the package's public API."""

__version__ = "0.1.0"
