"""The OLT repository on a real database: secrets stay encrypted, inputs are validated."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from daemon.network import devices as olt_store
from daemon.network.devices import DeviceExists, DeviceInUse, DeviceNotFound, StoreError
from daemon.network.olt.types import DeviceSpec
from daemon.platform.db import Database
from daemon.platform.secrets import SecretBox, SecretKeyError, verify_key

BOX = SecretBox(bytes(range(32)))


async def _add(db: Database, name: str = "olt-1", **kw: Any) -> int:
    args: dict[str, Any] = {
        "name": name,
        "vendor": "huawei",
        "host": "10.50.0.10",
        "port": 22,
        "username": "admin",
        "password": "Hunter2-pw",
        "enable_password": None,
        "options": None,
    }
    args.update(kw)
    return await olt_store.add_device(db, BOX, **args)


async def test_add_list_and_load_spec_decrypts(db: Database) -> None:
    with trio.fail_after(10):
        await _add(db, "olt-1", options={"zte_style": "c300"}, vendor="zte")
        await _add(db, "olt-0", enable_password="en-able")
        devices = await olt_store.list_devices(db)
        assert [d.name for d in devices] == ["olt-0", "olt-1"]
        assert [d.has_enable_password for d in devices] == [True, False]
        # Nothing password-like leaves list_devices, not even ciphertext.
        for d in devices:
            assert not any(
                "password" in k for k in d.__dataclass_fields__ if k != "has_enable_password"
            )
            assert "Hunter2" not in repr(d) and "v1:" not in repr(d)

        spec = await olt_store.load_spec(db, BOX, "olt-1")
        assert spec == DeviceSpec(
            name="olt-1",
            vendor="zte",
            host="10.50.0.10",
            port=22,
            username="admin",
            password="Hunter2-pw",
            enable_password=None,
            options={"zte_style": "c300"},
            version=1,
        )
        assert "Hunter2" not in repr(spec)
        spec0 = await olt_store.load_spec(db, BOX, "olt-0")
        assert spec0 is not None and spec0.enable_password == "en-able"
        assert await olt_store.load_spec(db, BOX, "nope") is None
        assert [s.name for s in await olt_store.load_specs(db, BOX)] == ["olt-0", "olt-1"]


async def test_passwords_are_stored_encrypted(db: Database) -> None:
    with trio.fail_after(10):
        await _add(db, enable_password="en-able-pw")
        row = await db.fetchrow("SELECT * FROM olt_devices WHERE name = 'olt-1'")
        assert row is not None
        everything = " ".join(str(v) for v in row.values())
        assert "Hunter2" not in everything and "en-able-pw" not in everything
        assert row["password_enc"].startswith(f"v2:{BOX.key_id}:")  # names its key
        assert row["enable_password_enc"].startswith(f"v2:{BOX.key_id}:")


async def test_a_password_copied_to_another_row_does_not_decrypt(db: Database) -> None:
    with trio.fail_after(10):
        await _add(db, "olt-a")
        await _add(db, "olt-b", password="other")
        await db.execute(
            "UPDATE olt_devices SET password_enc = "
            "(SELECT password_enc FROM olt_devices WHERE name = 'olt-a') WHERE name = 'olt-b'"
        )
        with pytest.raises(SecretKeyError):
            await olt_store.load_spec(db, BOX, "olt-b")


async def test_duplicate_and_invalid_devices_are_refused(db: Database) -> None:
    with trio.fail_after(10):
        await _add(db)
        with pytest.raises(DeviceExists):
            await _add(db)
        bad: list[dict[str, Any]] = [
            {"name": "-starts-with-dash"},
            {"name": "has:colon"},
            {"name": "x" * 65},
            {"vendor": "nokia"},
            {"port": 0},
            {"port": 70000},
            {"host": ""},
            {"username": " admin"},
            {"password": ""},
        ]
        for kw in bad:
            with pytest.raises(StoreError):
                await _add(db, **{"name": "olt-2", **kw})
        assert [d.name for d in await olt_store.list_devices(db)] == ["olt-1"]


async def test_update_is_partial(db: Database) -> None:
    with trio.fail_after(10):
        await _add(db, enable_password="en")
        await olt_store.update_device(db, BOX, "olt-1", host="10.50.0.11", password="new-pw")
        spec = await olt_store.load_spec(db, BOX, "olt-1")
        assert spec is not None
        assert (spec.host, spec.port, spec.password, spec.enable_password) == (
            "10.50.0.11",
            22,
            "new-pw",
            "en",
        )
        await olt_store.update_device(db, BOX, "olt-1", enable_password=None)
        spec = await olt_store.load_spec(db, BOX, "olt-1")
        assert spec is not None and spec.enable_password is None
        with pytest.raises(DeviceNotFound):
            await olt_store.update_device(db, BOX, "nope", port=2222)
        with pytest.raises(DeviceNotFound):
            await olt_store.update_device(db, BOX, "nope")
        with pytest.raises(StoreError):
            await olt_store.update_device(db, BOX, "olt-1", vendor="nokia")


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJ2+31t0pJTZNe5Uy5T6ENLb9XEt0eYBQND2FGu9anB"


async def test_every_update_bumps_the_version_and_host_keys_are_stored(db: Database) -> None:
    with trio.fail_after(10):
        await _add(db, host_key=KEY + " root@olt")  # the comment is not kept
        first = await olt_store.load_spec(db, BOX, "olt-1")
        assert first is not None
        assert (first.host_key, first.host_key_check, first.version) == (KEY, True, 1)
        await olt_store.update_device(db, BOX, "olt-1", port=2222)
        await olt_store.update_device(db, BOX, "olt-1", host_key=None, host_key_check=False)
        spec = await olt_store.load_spec(db, BOX, "olt-1")
        assert spec is not None
        assert (spec.port, spec.host_key, spec.host_key_check, spec.version) == (
            2222,
            None,
            False,
            3,
        )
        [listed] = await olt_store.list_devices(db)
        assert (listed.host_key, listed.host_key_check, listed.version) == (
            None,
            False,
            3,
        )
        with pytest.raises(StoreError, match="invalid host key"):
            await olt_store.update_device(db, BOX, "olt-1", host_key="ssh-ed25519 nonsense")
        with pytest.raises(StoreError, match="invalid host key"):
            await _add(db, "olt-2", host_key="not a key")
        spec_after = await olt_store.load_spec(db, BOX, "olt-1")
        assert spec_after == spec  # the refused update changed nothing


async def test_remove_device(db: Database) -> None:
    with trio.fail_after(10):
        await _add(db)
        await olt_store.set_override(db, 42, "olt-1", "0/1/3:12")
        with pytest.raises(DeviceInUse, match="42"):
            await olt_store.remove_device(db, "olt-1")
        assert await olt_store.remove_device(db, "olt-1", force=True)
        assert await olt_store.get_override(db, 42) is None
        assert not await olt_store.remove_device(db, "olt-1")
        assert await olt_store.list_devices(db) == []


async def test_overrides_validate_the_olt_and_the_onu(db: Database) -> None:
    with trio.fail_after(10):
        await _add(db)
        with pytest.raises(DeviceNotFound):
            await olt_store.set_override(db, 7, "ghost", "0/1/3:12")
        for onu in ("0/1/3", "a/b/c:d", ""):
            with pytest.raises(StoreError, match="ONU"):
                await olt_store.set_override(db, 7, "olt-1", onu)
        with pytest.raises(StoreError):
            await olt_store.set_override(db, 0, "olt-1", "0/1/3:12")
        assert await olt_store.list_overrides(db) == []

        await olt_store.set_override(db, 7, "olt-1", " 0/1/3/12 ", note="moved port")
        assert await olt_store.get_override(db, 7) == ("olt-1", "0/1/3:12")  # normalised
        await olt_store.set_override(db, 7, "olt-1", "0/2/1:5")  # replaces
        await olt_store.set_override(db, 8, "olt-1", "0/2/1:6")
        listed = await olt_store.list_overrides(db)
        assert [(o.service_id, o.onu, o.note) for o in listed] == [
            (7, "0/2/1:5", None),
            (8, "0/2/1:6", None),
        ]
        assert len(await olt_store.list_overrides(db, "olt-1")) == 2
        assert await olt_store.list_overrides(db, "other") == []
        assert await olt_store.remove_override(db, 7)
        assert not await olt_store.remove_override(db, 7)
        assert await olt_store.get_override(db, 7) is None


async def test_verify_key_at_start_up(db: Database) -> None:
    with trio.fail_after(10):
        await verify_key(db, SecretBox(bytes(32)))  # nothing stored yet: nothing to check
        await _add(db)
        await verify_key(db, BOX)
        with pytest.raises(SecretKeyError, match="wrong key"):
            await verify_key(db, SecretBox(bytes(32)))
