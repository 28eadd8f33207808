"""A Discord chat bot that runs a Hugging Face language model itself."""

__version__ = "0.1.0"
