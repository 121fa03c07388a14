"""Outbound webhooks: endpoints, deliveries, the dispatcher and their admin API."""
