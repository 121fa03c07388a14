"""``paymentd operators …`` as a real subprocess against the test's database."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.console import accounts
from daemon.platform.config import Config, DatabaseConfig, to_toml
from daemon.platform.db import Database
from tests.cli_process import paymentd

pytestmark = pytest.mark.usefixtures("aio_loop")


def _config(db_url: str, tmp: Path) -> str:
    path = tmp / "cli.toml"
    path.write_text(to_toml(Config().replace(database=DatabaseConfig(url=db_url))))
    return str(path)


async def test_operators_are_added_listed_and_disabled(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    config = _config(db_url, tmp_path)
    secret = tmp_path / "pw"
    secret.write_text("a long enough password\n")
    added = await paymentd("operators", "add", "bob", "--password-file", str(secret), "-c", config)
    assert added.code == 0, added.err
    assert await accounts.check_operator(db, "bob", "a long enough password")
    stored = await db.fetchval("SELECT password_hash FROM console_operators WHERE name = 'bob'")
    assert stored.startswith("scrypt$") and "a long enough password" not in stored

    again = await paymentd("operators", "add", "bob", "--password-file", str(secret), "-c", config)
    again.one_error_line("already exists")

    listed = await paymentd("operators", "list", "-c", config)
    assert listed.code == 0 and "bob" in listed.out and "active" in listed.out
    assert "long enough" not in listed.out

    token = await accounts.open_session(db, operator="bob", admin_token=None, lifetime_seconds=60)
    disabled = await paymentd("operators", "disable", "bob", "-c", config)
    assert disabled.code == 0, disabled.err
    assert await accounts.find_session(db, token, "") is None
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0
    assert not await accounts.check_operator(db, "bob", "a long enough password")
    assert await db.fetchval("SELECT disabled_at FROM console_operators WHERE name = 'bob'")


async def test_a_short_password_or_no_password_source_is_refused(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    config = _config(db_url, tmp_path)
    short = tmp_path / "pw"
    short.write_text("short\n")
    r = await paymentd("operators", "add", "bob", "--password-file", str(short), "-c", config)
    r.one_error_line("at least 12 characters")
    # No file, no environment variable and no terminal: say how to give one.
    r = await paymentd("operators", "add", "bob", "-c", config)
    r.one_error_line("--password-file")
    with pytest.raises(accounts.AccountError, match="operator name"):
        await accounts.add_operator(db, "bad name!", "a long enough password")
    assert await db.fetchval("SELECT count(*) FROM console_operators") == 0
