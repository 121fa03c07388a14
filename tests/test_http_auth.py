"""API keys and the admin token over real HTTP, on a real PostgreSQL, and the CLI for keys."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import httpx
import psycopg
import pytest
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from quart import Blueprint

from daemon.cli import main
from daemon.platform import auth
from daemon.platform.config import HttpConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.http import create_app
from tests.http_fixtures import (
    ADMIN,
    assert_problem,
    deps_fixture,  # noqa: F401 (the "deps" fixture)
    make_deps,
    serving,
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_key_with_the_admin_scope_opens_the_admin_api(
    deps: Deps, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(20):
        created = await auth.create_key(db, "ops laptop", [auth.ADMIN])
        assert created.key.startswith(f"pd_{created.id}_")
        async with serving(deps) as client:
            by_key = await client.get("/api/v1/queues", headers=bearer(created.key))
            by_token = await client.get("/api/v1/queues", headers=ADMIN)
            retry = await client.post("/api/v1/tasks/1/retry", headers=bearer(created.key))
        assert by_key.status_code == 200, by_key.text
        assert by_token.status_code == 200
        assert_problem(retry, 404)  # authorised; there is just no such task
        [row] = await auth.list_keys(db)
        assert row["last_used_at"] is not None
        assert "secret" not in " ".join(row)  # list_keys never returns the hash
        secret = created.key.split("_", 2)[2]
        assert secret not in caplog.text
        assert secret not in by_key.text + retry.text + str(retry.headers)


async def test_a_key_without_the_scope_is_forbidden(deps: Deps, db: Database) -> None:
    with trio.fail_after(20):
        created = await auth.create_key(db, "billing", [auth.PAYMENTS_READ, auth.PAYMENTS_WRITE])
        async with serving(deps) as client:
            response = await client.get("/api/v1/tasks", headers=bearer(created.key))
        problem = assert_problem(response, 403)
        assert problem["scope"] == "admin"
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
        assert created.key not in response.text


async def test_revoked_unknown_and_forged_keys_get_401(
    deps: Deps, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(20):
        revoked = await auth.create_key(db, "old", [auth.ADMIN])
        kept = await auth.create_key(db, "kept", [auth.ADMIN])
        await auth.revoke_key(db, revoked.id)
        forged = f"pd_{kept.id}_{'A' * 43}"
        unknown = f"pd_{'0' * 12}_{kept.key.split('_', 2)[2]}"
        async with serving(deps) as client:
            answers = [
                await client.get("/api/v1/tasks", headers=bearer(key))
                for key in (revoked.key, forged, unknown, kept.key + "x")
            ]
            still = await client.get("/api/v1/tasks", headers=bearer(kept.key))
        for response in answers:
            assert_problem(response, 401)
            assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert still.status_code == 200
        for key in (revoked.key, forged, unknown, kept.key):
            assert key.split("_", 2)[2] not in caplog.text
            assert all(key not in r.text for r in answers)


async def test_with_no_admin_token_only_keys_get_in(db: Database) -> None:
    with trio.fail_after(20):
        deps = make_deps(db, http=HttpConfig(port=0, admin_token=""))
        created = await auth.create_key(db, "ci", [auth.ADMIN])
        async with serving(deps) as client:
            key = await client.get("/api/v1/queues", headers=bearer(created.key))
            basic = await client.get("/api/v1/queues", headers={"Authorization": "Basic dDp0"})
        assert key.status_code == 200
        assert_problem(basic, 503)


async def test_create_refuses_bad_names_and_scopes(db: Database) -> None:
    with pytest.raises(auth.ApiKeyError, match="unknown scope 'root'"):
        await auth.create_key(db, "x", ["root"])
    with pytest.raises(auth.ApiKeyError, match="--name"):
        await auth.create_key(db, "", [auth.ADMIN])
    with pytest.raises(auth.ApiKeyError, match="no API key"):
        await auth.revoke_key(db, "ffffffffffff")
    assert await auth.list_keys(db) == []


def write_config(tmp_path: Path, db_url: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(f'[database]\nurl = "{db_url}"\n')
    return str(path)


def test_the_cli_creates_lists_and_revokes_keys(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, db_url)
    argv = ["apikey", "create", "--config", config, "--name", "billing"]
    assert main([*argv, "--scope", "payments:read", "--scope", "payments:write"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("pd_") and len(out.splitlines()) == 1
    key_id = key.split("_")[1]
    assert key not in err and "cannot be shown again" in err

    assert main(["apikey", "list", "--config", config]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "payments:read,payments:write" in listing
    assert key.split("_", 2)[2] not in listing

    assert main(["apikey", "revoke", "--config", config, key_id]) == 0
    assert capsys.readouterr().out.strip() == f"revoked {key_id}"
    assert main(["apikey", "list", "--config", config, "--json"]) == 0
    assert '"revoked_at": null' not in capsys.readouterr().out

    # Mistakes: one line, exit 2, no traceback.
    assert main(["apikey", "revoke", "--config", config, key_id]) == 2
    assert capsys.readouterr().err == f"paymentd: error: API key {key_id!r} was already revoked\n"
    assert main(["apikey", "create", "--config", config, "--name=-x", "--scope", "admin"]) == 2
    assert "--name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["apikey", "create", "--config", config, "--name", "x", "--scope", "root"])
    assert exit_.value.code == 2
    assert "invalid choice: 'root'" in capsys.readouterr().err

    # A database that was never migrated (to 003): one line that says what to run.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TABLE api_keys")
    assert main(["apikey", "list", "--config", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("paymentd: error: ") and err.count("\n") == 1
    assert "not migrated" in err and "paymentd migrate" in err


async def test_a_route_declares_its_scope_and_gets_only_callers_holding_it(
    deps: Deps, db: Database
) -> None:
    """``Guard.require``, as the payments API will use it, on the real app over HTTP."""
    app = create_app(deps)
    guard = auth.Guard(deps)
    bp = Blueprint("payments_probe", __name__)

    @bp.get("/api/v1/payments-probe")
    @guard.require(auth.PAYMENTS_READ)
    async def probe() -> dict[str, str]:
        return {"caller": str(auth.current_principal())}

    app.register_blueprint(bp)
    reader = await auth.create_key(db, "reader", [auth.PAYMENTS_READ])
    admin = await auth.create_key(db, "admin", [auth.ADMIN])
    config = HyperConfig()
    config.bind = ["127.0.0.1:0"]
    shutdown = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            [base] = await nursery.start(
                partial(serve, app, config, shutdown_trigger=shutdown.wait)
            )
            async with httpx.AsyncClient(base_url=base) as client:
                ok = await client.get("/api/v1/payments-probe", headers=bearer(reader.key))
                wrong_scope = await client.get("/api/v1/payments-probe", headers=bearer(admin.key))
                token = await client.get("/api/v1/payments-probe", headers=ADMIN)
                anonymous = await client.get("/api/v1/payments-probe")
                document = (await client.get("/openapi.json")).json()
            shutdown.set()
    assert ok.json() == {"caller": f"API key {reader.id} (reader)"}
    assert assert_problem(wrong_scope, 403)["scope"] == "payments:read"
    assert token.json() == {"caller": "the admin token"}
    assert_problem(anonymous, 401)
    operation = document["paths"]["/api/v1/payments-probe"]["get"]
    assert operation["security"] == [{"bearer": ["payments:read"]}]


def test_a_created_key_never_shows_in_a_repr() -> None:
    created = auth.CreatedKey("0123456789ab", "n", ["admin"], "pd_0123456789ab_" + "s" * 43)
    assert "s" * 43 not in repr(created)
