"""What the daemon says at start-up about its payment provider."""

from __future__ import annotations

import logging
import os

import pytest

from daemon import wiring
from daemon.platform.config import PaymentsConfig
from daemon.platform.db import Database
from daemon.platform.secrets import Keyring
from tests.http_fixtures import make_deps


@pytest.mark.parametrize("provider", ["mock", "none"])
async def test_the_mock_provider_is_announced_as_unsafe_for_real_money_at_start(
    db: Database, caplog: pytest.LogCaptureFixture, provider: str
) -> None:
    deps = make_deps(db, payments=PaymentsConfig(provider=provider))
    with caplog.at_level(logging.WARNING, logger="daemon.wiring"):
        async with wiring.open_resources(deps, Keyring(os.urandom(32), [])) as res:
            assert (res.payment_provider is None) == (provider == "none")
    warned = [r.getMessage() for r in caplog.records if "payments.provider" in r.getMessage()]
    if provider == "mock":
        assert warned == [
            'payments.provider = "mock": no money moves and anyone with a payment\'s link'
            " can pay it; use stripe in production"
        ]
    else:
        assert warned == []
