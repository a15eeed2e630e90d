"""vidfeat: aligned per-segment multi-modal video features and the models that use them."""

__version__ = "0.1.0"
