"""recspec: fast LLM-based generative recommendation with speculative decoding."""

__version__ = "0.1.0"
