"""Outbound webhooks: endpoints partners register, deliveries of events with durable retry
timers, Standard Webhooks signatures. Stores: ``endpoints``, ``deliveries``; fan-out of the
event outbox: ``fanout``; one exchange: ``sender``; the dispatcher actor lives in
``daemon.actors.webhook_dispatcher``."""
