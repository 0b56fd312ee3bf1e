"""cslrobust: adversarial susceptibility of contrastive vs supervised encoders, and its remedy."""

__version__ = "0.1.0"

__all__ = ["__version__"]
