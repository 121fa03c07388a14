"""The OLT device repository and the ONU override table (async, over ``Database``).

Passwords are stored only as ``SecretBox`` tokens bound to their row and column
(``secrets.olt_aad``) and leave this module in plaintext only inside a ``DeviceSpec``
(``load_spec``), which the OLT pool needs to log in. ``list_devices`` never returns them.

Every change bumps the row's ``version``: the running OLT pool reloads the row before each
request and reconnects when it differs. ``host_key`` is the device's pinned SSH host key
(public, so stored in clear); ``host_key_check=False`` is the explicit opt-out.

Validation errors are ``StoreError`` subclasses (also ``ValueError``) with messages fit
for the CLI; the database CHECK constraints repeat the important rules as a backstop.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast, get_args

from daemon.network import tasks
from daemon.network.olt.ssh import parse_host_key
from daemon.network.olt.types import DeviceSpec, OnuRef, Vendor
from daemon.platform.db import Database, Executor
from daemon.platform.secrets import SecretBox, olt_aad

VENDORS: tuple[str, ...] = get_args(Vendor)
# Same pattern as the olt_devices.name CHECK; it also keeps ':' out of names, which the
# associated-data encoding in secrets.olt_aad relies on.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NAME_MAX = 64


class StoreError(ValueError):
    """Invalid input for the OLT store; the message says what is wrong."""


class DeviceExists(StoreError):
    """A device with that name is already configured."""


class DeviceNotFound(StoreError):
    """No device of that name is configured."""


class DeviceInUse(StoreError):
    """ONU overrides still point at the device (remove them, or pass ``force=True``)."""


class _Unset(enum.Enum):
    UNSET = enum.auto()


# For update_device's enable_password: "leave as it is", as opposed to None ("clear it").
UNSET = _Unset.UNSET


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name) or len(name) > _NAME_MAX:
        raise StoreError(
            f"invalid OLT name {name!r}: letters, digits, '.', '_' and '-', starting with a "
            f"letter or digit, at most {_NAME_MAX} characters"
        )
    return name


def _check_vendor(vendor: str) -> Vendor:
    if vendor not in VENDORS:
        raise StoreError(f"invalid vendor {vendor!r}: must be one of {', '.join(VENDORS)}")
    return cast(Vendor, vendor)


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise StoreError(f"invalid port {port!r}: must be an integer from 1 to 65535")
    return port


def _check_text(field: str, value: str) -> str:
    if not value or value != value.strip():
        raise StoreError(f"{field} must be non-empty without leading or trailing spaces")
    return value


def _check_host_key(host_key: str) -> str:
    try:
        parse_host_key(host_key)
    except ValueError as exc:
        raise StoreError(f"invalid host key: {exc}") from None
    return " ".join(host_key.split()[:2])  # "type base64", without a comment


def _check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise StoreError("options must be a mapping with string keys")
    return dict(options)


async def add_device(
    db: Executor,
    box: SecretBox,
    *,
    name: str,
    vendor: str,
    host: str,
    port: int = 22,
    username: str,
    password: str,
    enable_password: str | None = None,
    options: Mapping[str, Any] | None = None,
    host_key: str | None = None,
    host_key_check: bool = True,
) -> int:
    """Add a device and return its id; ``DeviceExists`` if the name is taken.

    ``host_key`` pins the device's SSH host key; without one (and with the check on) the
    daemon refuses to connect unless ``olt.known_hosts`` has it.
    """
    _check_name(name)
    _check_vendor(vendor)
    _check_text("host", host)
    _check_port(port)
    _check_text("username", username)
    if not password:
        raise StoreError("password must not be empty")
    opts = _check_options(options)
    key = None if host_key is None else _check_host_key(host_key)
    enable_enc = (
        None
        if enable_password is None
        else box.encrypt(enable_password, aad=olt_aad(name, "enable_password"))
    )
    # ON CONFLICT instead of catching the unique violation: the bridge passes asyncpg's
    # own exception types through, and this keeps the store independent of them.
    device_id: int | None = await db.fetchval(
        """
        INSERT INTO olt_devices
            (name, vendor, host, port, username, password_enc, enable_password_enc, options,
             host_key, host_key_check)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        ON CONFLICT (name) DO NOTHING
        RETURNING id
        """,
        name,
        vendor,
        host,
        port,
        username,
        box.encrypt(password, aad=olt_aad(name, "password")),
        enable_enc,
        opts,
        key,
        host_key_check,
    )
    if device_id is None:
        raise DeviceExists(f"an OLT named {name!r} already exists")
    return device_id


async def update_device(
    db: Executor,
    box: SecretBox,
    name: str,
    *,
    vendor: str | None = None,
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    password: str | None = None,
    enable_password: str | _Unset | None = UNSET,
    options: Mapping[str, Any] | None = None,
    host_key: str | _Unset | None = UNSET,
    host_key_check: bool | None = None,
) -> None:
    """Change the given fields of a device (``None`` = unchanged) and bump its version.

    ``enable_password=None`` / ``host_key=None`` clear them; leave them ``UNSET`` to keep
    them. ``options`` replaces the whole mapping. Renaming is not supported: the name is
    part of each secret's associated data, so a rename is remove + add.
    """
    sets: list[str] = []
    args: list[Any] = [name]

    def put(column: str, value: Any) -> None:
        args.append(value)
        sets.append(f"{column} = ${len(args)}")

    if vendor is not None:
        put("vendor", _check_vendor(vendor))
    if host is not None:
        put("host", _check_text("host", host))
    if port is not None:
        put("port", _check_port(port))
    if username is not None:
        put("username", _check_text("username", username))
    if password is not None:
        if not password:
            raise StoreError("password must not be empty")
        put("password_enc", box.encrypt(password, aad=olt_aad(name, "password")))
    if enable_password is not UNSET:
        put(
            "enable_password_enc",
            None
            if enable_password is None
            else box.encrypt(enable_password, aad=olt_aad(name, "enable_password")),
        )
    if options is not None:
        put("options", _check_options(options))
    if host_key is not UNSET:
        put("host_key", None if host_key is None else _check_host_key(host_key))
    if host_key_check is not None:
        put("host_key_check", bool(host_key_check))
    if not sets:
        # Still tell the caller when the device does not exist.
        if await db.fetchval("SELECT 1 FROM olt_devices WHERE name = $1", name) is None:
            raise DeviceNotFound(f"no OLT named {name!r}")
        return
    status = await db.execute(
        f"UPDATE olt_devices SET {', '.join(sets)}, version = version + 1, updated_at = now()"
        " WHERE name = $1",
        *args,
    )
    if status == "UPDATE 0":
        raise DeviceNotFound(f"no OLT named {name!r}")
    # Tasks waiting to retry against the old settings try the new ones now.
    await tasks.hurry_waiting(db, name)


async def remove_device(db: Database, name: str, *, force: bool = False) -> bool:
    """Remove a device; ``False`` if there was none.

    Refuses (``DeviceInUse``) while ONU overrides point at it, because those services
    would then fail to reconnect with an unknown device; ``force`` removes them too, in
    the same transaction.
    """
    async with db.transaction() as tx:
        rows: list[Any] = await tx.fetch(
            "SELECT service_id FROM onu_overrides WHERE olt_name = $1 ORDER BY service_id", name
        )
        users: list[int] = [r["service_id"] for r in rows]
        if users and not force:
            shown = ", ".join(map(str, users[:10])) + (" ..." if len(users) > 10 else "")
            raise DeviceInUse(
                f"ONU overrides of {len(users)} service(s) point at OLT {name!r} "
                f"(service ids {shown}); remove them first or pass --force"
            )
        await tx.execute("DELETE FROM onu_overrides WHERE olt_name = $1", name)
        status = await tx.execute("DELETE FROM olt_devices WHERE name = $1", name)
        # Its waiting tasks learn now that the device is gone (they fail, saying so).
        await tasks.hurry_waiting(tx, name)
    return status != "DELETE 0"


@dataclass(frozen=True)
class Device:
    """A configured OLT as listed: never a password, nor its ciphertext."""

    id: int
    name: str
    vendor: str
    host: str
    port: int
    username: str
    has_enable_password: bool
    options: dict[str, Any]
    host_key: str | None
    host_key_check: bool
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class Override:
    service_id: int
    olt_name: str
    onu: str
    note: str | None
    created_at: dt.datetime


async def list_devices(db: Executor) -> list[Device]:
    """All devices, ordered by name, without any password (only whether one is set)."""
    rows = await db.fetch(
        """
        SELECT id, name, vendor, host, port, username,
               enable_password_enc IS NOT NULL AS has_enable_password,
               options, host_key, host_key_check, version, created_at, updated_at
        FROM olt_devices ORDER BY name
        """
    )
    return [Device(**{k: r[k] for k in Device.__dataclass_fields__}) for r in rows]


def _spec(box: SecretBox, row: Mapping[str, Any]) -> DeviceSpec:
    name: str = row["name"]
    enable_enc: str | None = row["enable_password_enc"]
    return DeviceSpec(
        name=name,
        vendor=_check_vendor(row["vendor"]),
        host=row["host"],
        port=row["port"],
        username=row["username"],
        password=box.decrypt(row["password_enc"], aad=olt_aad(name, "password")),
        enable_password=(
            None
            if enable_enc is None
            else box.decrypt(enable_enc, aad=olt_aad(name, "enable_password"))
        ),
        options=dict(row["options"]),
        host_key=row["host_key"],
        host_key_check=row["host_key_check"],
        version=row["version"],
    )


_SPEC_COLUMNS = (
    "name, vendor, host, port, username, password_enc, enable_password_enc, options,"
    " host_key, host_key_check, version"
)


async def load_spec(db: Executor, box: SecretBox, name: str) -> DeviceSpec | None:
    """The device with its passwords decrypted, or ``None`` if there is no such device.

    Raises ``SecretKeyError`` if the stored secrets do not decrypt with ``box``.
    """
    row = await db.fetchrow(f"SELECT {_SPEC_COLUMNS} FROM olt_devices WHERE name = $1", name)
    return None if row is None else _spec(box, row)


async def load_specs(db: Executor, box: SecretBox) -> list[DeviceSpec]:
    """Every device with its passwords decrypted (for the OLT pool at start-up)."""
    rows = await db.fetch(f"SELECT {_SPEC_COLUMNS} FROM olt_devices ORDER BY name")
    return [_spec(box, r) for r in rows]


# --- ONU overrides -------------------------------------------------------------------


def _check_service_id(service_id: int) -> int:
    if isinstance(service_id, bool) or not isinstance(service_id, int) or service_id < 1:
        raise StoreError(f"invalid service id {service_id!r}: must be a positive integer")
    return service_id


async def set_override(
    db: Executor, service_id: int, olt_name: str, onu: str, *, note: str | None = None
) -> None:
    """Say where a UISP service's ONU is, overriding its custom attributes.

    ``onu`` is validated with ``OnuRef.parse`` and stored normalised
    (``frame/slot/port:onu``); ``DeviceNotFound`` if no OLT has that name. Replaces any
    previous override of the service.
    """
    _check_service_id(service_id)
    try:
        ref = OnuRef.parse(onu)
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    # The existence check and the write are one statement, so no separate round-trip
    # can see a device that is gone by the time the row is written.
    written = await db.fetchval(
        """
        INSERT INTO onu_overrides (service_id, olt_name, onu, note)
        SELECT $1, $2, $3, $4
        WHERE EXISTS (SELECT 1 FROM olt_devices WHERE name = $2)
        ON CONFLICT (service_id) DO UPDATE
            SET olt_name = EXCLUDED.olt_name, onu = EXCLUDED.onu, note = EXCLUDED.note
        RETURNING service_id
        """,
        service_id,
        olt_name,
        str(ref),
        note,
    )
    if written is None:
        raise DeviceNotFound(f"no OLT named {olt_name!r} (add it with 'paymentd olt add')")


async def remove_override(db: Executor, service_id: int) -> bool:
    """Remove a service's override; ``False`` if it had none."""
    status = await db.execute("DELETE FROM onu_overrides WHERE service_id = $1", service_id)
    return status != "DELETE 0"


async def get_override(db: Executor, service_id: int) -> tuple[str, str] | None:
    """``(olt_name, onu)`` for the service, or ``None`` if it has no override."""
    row = await db.fetchrow(
        "SELECT olt_name, onu FROM onu_overrides WHERE service_id = $1", service_id
    )
    return None if row is None else (row["olt_name"], row["onu"])


async def list_overrides(db: Executor, olt_name: str | None = None) -> list[Override]:
    """All overrides (or those of one OLT), ordered by service id."""
    rows = await db.fetch(
        """
        SELECT service_id, olt_name, onu, note, created_at FROM onu_overrides
        WHERE $1::text IS NULL OR olt_name = $1
        ORDER BY service_id
        """,
        olt_name,
    )
    return [Override(**{k: r[k] for k in Override.__dataclass_fields__}) for r in rows]
