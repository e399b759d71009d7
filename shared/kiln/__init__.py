"""Kiln: slow AI generation (images, GLB models) behind a webhook, on Google Cloud."""

__version__ = "0.1.0"
