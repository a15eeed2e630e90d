"""vidfeat: aligned per-segment multi-modal video features and the models that use them."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `import vidfeat` (and `vidfeat --help`) does not load torch.
    if name == "load_model":
        from vidfeat.models import load_model

        return load_model
    raise AttributeError(f"module 'vidfeat' has no attribute {name!r}")
