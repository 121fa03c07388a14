"""Stripe's webhook signing secrets in the keyring: two verify during a rotation, a retired
one stops, a forged or stale signature is still 400 with nothing stored, and no secret
ever shows (CLI output, logs, reprs).

Real HTTP (the ingress actor), real PostgreSQL, the real CLI as a subprocess.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from daemon.payments import stripe_events, stripe_secrets
from daemon.platform.config import PaymentsConfig, SecretsConfig, to_toml
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from daemon.platform.secrets import keygen, load_keyring, rotate
from tests.cli_process import Ran, paymentd
from tests.http_fixtures import assert_problem, make_deps, serving
from tests.payments_harness import make_config
from tests.test_stripe_webhook import event, post, queued, signed

OLD = "whsec_rotation_old_5b1f0c9a7e"
NEW = "whsec_rotation_new_93d2e8a41c"
FROM_CONFIG = "whsec_from_config_77aa01"
THIRD = "whsec_third_one_abcdef"
NOT_WHSEC = "sk_live_not_a_signing_secret"


def keyed_deps(db: Database, tmp: Path, *config_secrets: str, refresh: float = 0.2) -> Deps:
    key = tmp / "secret.key"
    if not key.exists():
        keygen(key)
    return make_deps(
        db,
        secrets=SecretsConfig(key_file=str(key)),
        payments=PaymentsConfig(
            stripe_webhook_secrets=config_secrets, stripe_webhook_secrets_refresh_seconds=refresh
        ),
    )


async def until_refused(client: object, body_id: str, secret: str) -> None:
    """Post events signed with ``secret`` until one is refused (the cache has refreshed)."""
    with trio.fail_after(10):
        for n in range(10_000):
            r = await post(client, *signed(event(f"{body_id}_{n}"), secret))  # type: ignore[arg-type]
            if r.status_code == 400:
                return
            assert r.status_code == 200, r.text
            await trio.sleep(0.05)


async def test_during_a_rotation_both_verify_and_after_retire_only_the_new_one(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    deps = keyed_deps(db, tmp_path)
    box = load_keyring(deps.config.secrets)
    old = await stripe_secrets.add(db, box, OLD, "endpoint we_1")
    async with serving(deps) as client:
        assert (await post(client, *signed(event("evt_old_1"), OLD))).status_code == 200
        new = await stripe_secrets.add(db, box, NEW)
        # Added while the daemon runs: it verifies at once (the miss re-reads the keyring).
        assert (await post(client, *signed(event("evt_new_1"), NEW))).status_code == 200
        assert (await post(client, *signed(event("evt_old_2"), OLD))).status_code == 200
        with pytest.raises(stripe_secrets.SigningSecretError, match="retire the old one first"):
            await stripe_secrets.add(db, box, "whsec_a_third_one_0000")
        await stripe_secrets.retire(db, old.id)
        await until_refused(client, "evt_old_after", OLD)
        assert (await post(client, *signed(event("evt_new_2"), NEW))).status_code == 200
        forged = await post(client, *signed(event("evt_forged"), "whsec_not_ours_1234567"))
        stale = await post(client, *signed(event("evt_stale"), NEW, age=301))
    assert "does not match" in assert_problem(forged, 400)["detail"]
    assert "older than 300 s" in assert_problem(stale, 400)["detail"]
    stored = await queued(db)
    assert {"evt_old_1", "evt_new_1", "evt_old_2", "evt_new_2"} <= set(stored)
    for refused_id in ("evt_forged", "evt_stale"):
        assert await stripe_events.get(db, refused_id) is None
    refused = [e for e in stored if e.startswith("evt_old_after")]
    assert len(refused) == len(stored) - 4  # those before the refresh verified; not the last
    assert [(s.id, s.active) for s in await stripe_secrets.listing(db)] == [
        (new.id, True), (old.id, False),
    ]  # fmt: skip
    # Stored encrypted, bound to the row; never in a log line or a repr.
    tokens = [
        r["secret_enc"] for r in await db.fetch("SELECT secret_enc FROM stripe_webhook_secrets")
    ]
    assert all(t.startswith("v2:") and OLD not in t and NEW not in t for t in tokens)
    for secret in (OLD, NEW):
        assert secret not in caplog.text
        assert secret not in repr(old) + repr(new)


async def test_the_configs_secret_is_still_accepted_beside_the_keyrings(
    db: Database, tmp_path: Path
) -> None:
    deps = keyed_deps(db, tmp_path, FROM_CONFIG)
    await stripe_secrets.add(db, load_keyring(deps.config.secrets), NEW)
    async with serving(deps) as client:
        by_config = await post(client, *signed(event("evt_cfg"), FROM_CONFIG))
        by_keyring = await post(client, *signed(event("evt_ring"), NEW))
    assert by_config.status_code == by_keyring.status_code == 200
    assert sorted(await queued(db)) == ["evt_cfg", "evt_ring"]


async def test_stored_secrets_without_their_key_answer_503_and_store_nothing(
    db: Database, tmp_path: Path
) -> None:
    deps = keyed_deps(db, tmp_path)
    await stripe_secrets.add(db, load_keyring(deps.config.secrets), NEW)
    lost = make_deps(db, secrets=SecretsConfig(key_file=str(tmp_path / "gone.key")))
    async with serving(lost) as client:
        r = await post(client, *signed(event("evt_no_key"), NEW))
    assert assert_problem(r, 503)["status"] == 503
    assert await stripe_events.count(db) == 0


async def cli_at_once(*commands: tuple[str, ...]) -> list[Ran]:
    """Several CLI runs side by side (each is a process start: seconds on a busy host)."""
    results: dict[int, Ran] = {}

    async def one(i: int, args: tuple[str, ...]) -> None:
        results[i] = await paymentd(*args)

    async with trio.open_nursery() as nursery:
        for i, args in enumerate(commands):
            nursery.start_soon(one, i, args)
    return [results[i] for i in range(len(commands))]


async def test_the_cli_adds_lists_and_retires_secrets_and_never_prints_one(
    db_url: str, db: Database, tmp_path: Path
) -> None:
    cfg = make_config(db_url, tmp_path, provider="stripe")
    config = tmp_path / "config.toml"
    config.write_text(to_toml(cfg))
    c = ("-c", str(config))
    files = {}
    for name, value in (("old", OLD), ("new", NEW), ("third", THIRD), ("bad", NOT_WHSEC)):
        files[name] = tmp_path / f"{name}.whsec"
        files[name].write_text(value + "\n")
    add = ("payments", "stripe-secret", "add", "--file")
    ran = await cli_at_once((*add, str(files["old"]), "--note", "we_1", *c),
                            (*add, str(files["new"]), *c))  # fmt: skip
    assert [r.code for r in ran] == [0, 0], [r.err for r in ran]
    third, bad, listed = await cli_at_once(
        (*add, str(files["third"]), *c),
        (*add, str(files["bad"]), *c),
        ("payments", "stripe-secret", "list", *c),
    )
    third.one_error_line("2 secrets are active", "retire")
    bad.one_error_line("not a Stripe signing secret")
    old_id = await db.fetchval("SELECT id FROM stripe_webhook_secrets WHERE note = 'we_1'")
    new_id = await db.fetchval("SELECT id FROM stripe_webhook_secrets WHERE note IS NULL")
    assert listed.code == 0 and old_id in listed.out and new_id in listed.out
    assert "we_1" in listed.out and listed.out.count("active") == 2
    [retired] = await cli_at_once(("payments", "stripe-secret", "retire", old_id, *c))
    assert retired.code == 0 and f"retired {old_id}" in retired.out
    unknown, after = await cli_at_once(
        ("payments", "stripe-secret", "retire", "sws_0000000000000000", *c),
        ("payments", "stripe-secret", "list", *c),
    )
    unknown.one_error_line("no signing secret")
    assert after.out.count("active") == 1 and "retired" in after.out
    everything = "".join(r.out + r.err for r in (*ran, third, bad, listed, retired, after))
    for secret in (OLD, NEW, THIRD, NOT_WHSEC):
        assert secret not in everything


async def test_a_secret_active_already_is_refused_and_the_keyring_rotation_covers_them(
    db: Database, tmp_path: Path
) -> None:
    deps = keyed_deps(db, tmp_path)
    old_key = load_keyring(deps.config.secrets)
    stored = await stripe_secrets.add(db, old_key, NEW)
    with pytest.raises(stripe_secrets.SigningSecretError, match=f"already active as {stored.id}"):
        await stripe_secrets.add(db, old_key, " " + NEW + "\n")
    # A new keyring key: `paymentd secrets rotate` re-encrypts the signing secret too.
    new_key_file = tmp_path / "new.key"
    keygen(new_key_file)
    ring = load_keyring(
        SecretsConfig(key_file=str(new_key_file), old_key_files=(str(tmp_path / "secret.key"),))
    )
    report = await rotate(db, ring)
    assert report.rewritten["stripe_webhook_secrets.secret_enc"] == 1
    rotated = make_deps(
        db,
        secrets=SecretsConfig(key_file=str(new_key_file)),
        payments=PaymentsConfig(stripe_webhook_secrets_refresh_seconds=0.2),
    )
    async with serving(rotated) as client:
        assert (await post(client, *signed(event("evt_rotated"), NEW))).status_code == 200
