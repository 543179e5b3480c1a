"""thresher: pick the supervised-fine-tuning examples worth training an LLM on."""

__version__ = "0.1.0"
