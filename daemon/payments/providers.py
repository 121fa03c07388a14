"""The configured payment provider (``payments.provider``), built once per daemon.

``stripe`` comes from ``daemon.payments.stripe_provider`` (``StripeProvider.from_config``),
imported only when configured so the mock and "none" set-ups load nothing of Stripe.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import Any

from daemon.payments.mock_provider import MockProvider
from daemon.payments.processor import ProcessorDeps
from daemon.payments.provider import PaymentProvider
from daemon.platform.config import ConfigError, PaymentsConfig
from daemon.platform.db import Database
from daemon.platform.events import EventBus
from daemon.platform.metrics import Metrics


def make(cfg: PaymentsConfig, db: Database) -> PaymentProvider | None:
    if cfg.provider == "none":
        return None
    if cfg.provider == "mock":
        return MockProvider(db, cfg.public_base_url)
    try:
        module: Any = importlib.import_module("daemon.payments.stripe_provider")
    except ImportError:
        raise ConfigError(
            'payments.provider = "stripe": this build has no Stripe provider'
        ) from None
    provider: PaymentProvider = module.StripeProvider.from_config(cfg)
    return provider


@contextlib.asynccontextmanager
async def processor_deps(
    cfg: PaymentsConfig,
    db: Database,
    events: EventBus,
    provider: PaymentProvider | None = None,
    metrics: Metrics | None = None,
) -> AsyncIterator[ProcessorDeps]:
    """``ProcessorDeps`` with ``provider``, or one built (and closed) for this use: the CLI
    and the jobs run once without a daemon's."""
    if provider is not None:
        yield ProcessorDeps(db, provider, cfg, events, metrics=metrics)
        return
    built = make(cfg, db)
    try:
        yield ProcessorDeps(db, built, cfg, events, metrics=metrics)
    finally:
        if built is not None:
            await built.aclose()
