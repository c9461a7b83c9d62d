"""parcli: Parallelized Autoregressive (PAR) visual generation from LlamaGen-family transformers."""

__version__ = "0.1.0"
