"""Key rotation on a real database: every stored secret moves to the current key, at once."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daemon.network import devices as olt_store
from daemon.platform.db import Database
from daemon.platform.secrets import (
    EncryptedColumn,
    Keyring,
    SecretKeyError,
    key_id,
    key_usage,
    olt_aad,
    rotate,
    verify_key,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
ROOT = Path(__file__).resolve().parent.parent


async def _add(db: Database, ring: Keyring, name: str, enable: str | None = None) -> None:
    await olt_store.add_device(
        db,
        ring,
        name=name,
        vendor="huawei",
        host="10.50.0.10",
        username="admin",
        password=f"pw-{name}",
        enable_password=enable,
    )


async def _tokens(db: Database) -> list[str]:
    rows = await db.fetch("SELECT password_enc, enable_password_enc FROM olt_devices ORDER BY name")
    return [t for r in rows for t in (r["password_enc"], r["enable_password_enc"]) if t]


def _v1_token(key: bytes, plaintext: str, aad: bytes) -> str:
    """A token as stored before the keyring existed (no key id)."""
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), aad)
    return "v1:" + base64.urlsafe_b64encode(nonce + sealed).decode()


async def test_rotate_moves_every_secret_to_the_current_key_and_the_old_key_can_go(
    db: Database,
) -> None:
    with trio.fail_after(20):
        under_a = Keyring(KEY_A)
        await _add(db, under_a, "olt-1", enable="en-1")
        await _add(db, under_a, "olt-2")
        # A device stored before the keyring: a v1 token that names no key.
        await db.execute(
            "UPDATE olt_devices SET password_enc = $1 WHERE name = 'olt-2'",
            _v1_token(KEY_A, "pw-olt-2", olt_aad("olt-2")),
        )
        assert await key_usage(db) == {
            "olt_devices.password_enc": {key_id(KEY_A): 1, "v1": 1},
            "olt_devices.enable_password_enc": {key_id(KEY_A): 1},
            "webhook_secrets.secret_enc": {},
            "stripe_webhook_secrets.secret_enc": {},
        }

        ring = Keyring(KEY_B, [KEY_A])
        await verify_key(db, ring)  # B current + A old opens everything
        report = await rotate(db, ring)
        assert report.key_id == key_id(KEY_B)
        assert report.rewritten == {
            "olt_devices.password_enc": 2,
            "olt_devices.enable_password_enc": 1,
            "webhook_secrets.secret_enc": 0,
            "stripe_webhook_secrets.secret_enc": 0,
        }
        assert report.total_rewritten == 3
        assert all(t.startswith(f"v2:{key_id(KEY_B)}:") for t in await _tokens(db))

        # Idempotent: nothing left to do the second time.
        again = await rotate(db, ring)
        assert again.total_rewritten == 0 and sum(again.current.values()) == 3

        # Key A can be removed: B alone opens every device.
        only_b = Keyring(KEY_B)
        await verify_key(db, only_b)
        spec = await olt_store.load_spec(db, only_b, "olt-1")
        assert spec is not None
        assert (spec.password, spec.enable_password) == ("pw-olt-1", "en-1")
        spec2 = await olt_store.load_spec(db, only_b, "olt-2")
        assert spec2 is not None and spec2.password == "pw-olt-2"
        assert await key_usage(db) == {
            "olt_devices.password_enc": {key_id(KEY_B): 2},
            "olt_devices.enable_password_enc": {key_id(KEY_B): 1},
            "webhook_secrets.secret_enc": {},
            "stripe_webhook_secrets.secret_enc": {},
        }

        # And the start-up check now refuses the old key alone, naming the missing id.
        with pytest.raises(SecretKeyError, match=f"key id\\(s\\) {key_id(KEY_B)}"):
            await verify_key(db, Keyring(KEY_A))


async def test_rotation_is_all_or_nothing(db: Database) -> None:
    with trio.fail_after(20):
        await _add(db, Keyring(KEY_A), "olt-1")
        await _add(db, Keyring(KEY_A), "olt-2")
        stray = bytes(range(200, 232))
        await db.execute(
            "UPDATE olt_devices SET password_enc = $1 WHERE name = 'olt-2'",
            Keyring(stray).encrypt("pw", aad=olt_aad("olt-2")),
        )
        before = await _tokens(db)
        with pytest.raises(SecretKeyError) as info:
            await rotate(db, Keyring(KEY_B, [KEY_A]))
        msg = str(info.value)
        assert "olt_devices.password_enc of olt_devices.id=" in msg
        assert key_id(stray) in msg and "nothing was re-encrypted" in msg
        assert await _tokens(db) == before  # olt-1's rewrite was rolled back too


async def test_more_columns_can_register_for_rotation(db: Database) -> None:
    """The registry is data: a new kind of stored secret adds a column and is rotated too."""
    with trio.fail_after(20):
        await db.execute("CREATE TABLE provider_keys (id bigint PRIMARY KEY, secret_enc text)")
        col = EncryptedColumn(
            "provider_keys", "id", "secret_enc", ("id",), lambda r: f"wh:{r['id']}".encode()
        )
        under_a = Keyring(KEY_A)
        await db.execute(
            "INSERT INTO provider_keys VALUES (1, $1), (2, NULL)",
            under_a.encrypt("whsec", aad=b"wh:1"),
        )
        report = await rotate(db, Keyring(KEY_B, [KEY_A]), [col])
        assert report.rewritten == {"provider_keys.secret_enc": 1}
        token = await db.fetchval("SELECT secret_enc FROM provider_keys WHERE id = 1")
        assert Keyring(KEY_B).decrypt(token, aad=b"wh:1") == "whsec"


def _key_file(path: Path, key: bytes) -> Path:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    os.write(fd, key.hex().encode() + b"\n")
    os.close(fd)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYMENTD_")}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


async def test_cli_secrets_rotate_and_status(db: Database, db_url: str, tmp_path: Path) -> None:
    with trio.fail_after(120):
        await _add(db, Keyring(KEY_A), "olt-1", enable="en-1")
        a = _key_file(tmp_path / "a.key", KEY_A)
        b = _key_file(tmp_path / "b.key", KEY_B)
        cfg = tmp_path / "config.toml"
        cfg.write_text(
            f'[database]\nurl = "{db_url}"\n[secrets]\nkey_file = "{b}"\nold_key_files = ["{a}"]\n'
        )
        status = await trio.to_thread.run_sync(_cli, "secrets", "status", "--config", str(cfg))
        assert status.returncode == 0, status.stderr
        assert f"olt_devices.password_enc: 1 under key id {key_id(KEY_A)} (old)" in status.stdout
        assert "run 'paymentd secrets rotate'" in status.stdout

        done = await trio.to_thread.run_sync(_cli, "secrets", "rotate", "--config", str(cfg))
        assert done.returncode == 0, done.stderr
        assert f"re-encrypted 2 secret(s) with key id {key_id(KEY_B)}" in done.stdout
        again = await trio.to_thread.run_sync(_cli, "secrets", "rotate", "--config", str(cfg))
        assert "re-encrypted 0 secret(s)" in again.stdout and "2 already used it" in again.stdout

        # The old key is dropped from the config; check-config (the unit's ExecStartPre)
        # accepts the new key alone.
        cfg.write_text(f'[database]\nurl = "{db_url}"\n[secrets]\nkey_file = "{b}"\n')
        check = await trio.to_thread.run_sync(_cli, "check-config", "--config", str(cfg))
        assert check.returncode == 0, check.stderr
        assert "cannot connect" not in check.stdout

        # With only key A the CLI says which key is missing, in one line, exit 2.
        cfg.write_text(f'[database]\nurl = "{db_url}"\n[secrets]\nkey_file = "{a}"\n')
        wrong = await trio.to_thread.run_sync(_cli, "check-config", "--config", str(cfg))
        assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
        assert key_id(KEY_B) in wrong.stderr and "secrets.old_key_files" in wrong.stderr
        assert KEY_A.hex() not in wrong.stderr + wrong.stdout
        status = await trio.to_thread.run_sync(_cli, "secrets", "status", "--config", str(cfg))
        assert status.returncode == 2
        assert f"key id {key_id(KEY_B)} (NOT IN THE KEYRING)" in status.stdout
