"""A PyTorch inference microservice on LitServe."""

__version__ = "0.1.0"
