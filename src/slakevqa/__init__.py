"""slakevqa: fine-tune and evaluate LLaVA-family models on SLAKE."""
__version__ = "0.1.0"
