"""Everything HTTP: wire models, auth, errors, image storage and signed URLs, settings."""

__version__ = "0.1.0"
