"""paymentd: payment webhook & worker daemon (trio)."""

__version__ = "0.1.0"
