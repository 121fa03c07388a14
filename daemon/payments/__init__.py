"""Payments: the payment processor, its providers and its API."""
