"""Secrets at rest: AES-256-GCM with keys the operator provides, never ones we invent.

The system we replace generated its encryption key silently when none was set, so a
restart with a lost environment variable produced a *new* key and every stored OLT
password became unreadable without anyone being told. Here a missing or malformed key is
a start-up error that says what to run, and ``keygen`` is only ever an explicit command.

A ``Keyring`` holds the current key (``[secrets] key_file`` / ``key``), which encrypts
every new secret, and older keys (``old_key_files`` / ``old_keys``) that only decrypt,
so keys can be rotated: add the new key as current and the old one as old, run
``paymentd secrets rotate`` (which re-encrypts every stored secret listed in
``ENCRYPTED_COLUMNS``), then drop the old key.

Token formats:

* ``v2:<key id>:`` + base64url(nonce(12) || ciphertext || tag(16)), written now; the key
  id is a non-secret fingerprint of the key (``key_id``), so decryption picks its key
  directly and a missing key is reported by id;
* ``v1:`` + base64url(...) (before the keyring): no key id, so every key in the ring is
  tried; ``secrets rotate`` rewrites them as ``v2``.

Each value is bound to the row and column it belongs to through the AEAD's associated data
(``olt_aad``), so a ciphertext copied into another device's row (or from ``password`` into
``enable_password``) fails to decrypt instead of logging into the wrong OLT.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from daemon.platform.config import SecretsConfig

if TYPE_CHECKING:
    from daemon.platform.db import Database, Executor

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16
_V1 = "v1:"
_V2 = "v2:"

_KEY_SOURCES = "the key in secrets.key_file (or PAYMENTD_SECRETS_KEY)"
_HOW_TO_GET_A_KEY = (
    "run 'paymentd keygen --out PATH' and set secrets.key_file = PATH, "
    "or set PAYMENTD_SECRETS_KEY (64 hex characters or base64 of 32 bytes); "
    "if secrets are already stored, use the key they were encrypted with"
)
_HOW_TO_ADD_AN_OLD_KEY = (
    "restore that key as secrets.key_file, or list its file in secrets.old_key_files "
    "(decryption only) and run 'paymentd secrets rotate'"
)


class SecretKeyError(Exception):
    """The key is missing, malformed, unsafe, or not the one the stored secrets use.

    The message is written for the operator: it names the cause and what to do.
    """


def olt_aad(name: str, column: str = "password") -> bytes:
    """Associated data binding an OLT secret to its device row and column.

    Device names cannot contain ``:`` (see the ``olt_devices.name`` CHECK), so the
    encoding is unambiguous.
    """
    return f"olt:{name}:{column}".encode()


def key_id(key: bytes) -> str:
    """A non-secret fingerprint, so tokens and logs can say *which* key without showing it."""
    return hashlib.sha256(b"paymentd key id\0" + key).hexdigest()[:12]


def token_key_id(token: str) -> str | None:
    """The key id a ``v2`` token names; ``None`` for a ``v1`` token (or anything else)."""
    if token.startswith(_V2):
        kid, sep, _ = token[len(_V2) :].partition(":")
        return kid if sep else None
    return None


class Keyring:
    """Encrypts short strings with the current key; decrypts with whichever key a token
    names (AES-256-GCM). ``Keyring(key)`` alone is a ring of one key."""

    def __init__(self, current: bytes, older: Iterable[bytes] = ()) -> None:
        self._keys: dict[str, AESGCM] = {}
        self._raw: dict[str, bytes] = {}  # for derive(); never shown (no repr, no log)
        for key in (current, *older):
            if len(key) != KEY_BYTES:
                raise SecretKeyError(f"encryption key must be {KEY_BYTES} bytes, got {len(key)}")
            self._keys.setdefault(key_id(key), AESGCM(key))
            self._raw.setdefault(key_id(key), key)
        self.key_id = key_id(current)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id in the ring, the current one first."""
        return tuple(self._keys)

    def __repr__(self) -> str:
        return f"Keyring(key_id={self.key_id!r}, old={list(self.key_ids[1:])!r})"

    def derive(self, purpose: bytes) -> list[bytes]:
        """A 32-byte key per ring key for ``purpose`` (HKDF-SHA256), the current one first.

        For MACs that need no new secret to configure (checkout links): one purpose's keys
        tell nothing about another's, nor about the encryption keys, and a rotation keeps
        verifying what older keys signed while they stay in the ring.
        """
        return [
            HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(key)
            for key in self._raw.values()
        ]

    def is_current(self, token: str) -> bool:
        """Whether ``token`` is already a ``v2`` token under the current key."""
        return token_key_id(token) == self.key_id

    def encrypt(self, plaintext: str, *, aad: bytes = b"") -> str:
        """Encrypt with the current key and a fresh random 96-bit nonce (safe far beyond
        our volumes)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.key_id].encrypt(nonce, plaintext.encode(), aad or None)
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
        return f"{_V2}{self.key_id}:{body}"

    def decrypt(self, token: str, *, aad: bytes = b"") -> str:
        """Decrypt a ``v2`` or ``v1`` token; any failure is a ``SecretKeyError`` naming the
        cause (and the key id, never the key)."""
        what = f"secret {aad.decode(errors='replace')!r}" if aad else "secret"
        if token.startswith(_V2):
            kid = token_key_id(token)
            if kid is None:
                raise SecretKeyError(f"cannot decrypt {what}: malformed v2 token (no key id)")
            if kid not in self._keys:
                raise SecretKeyError(
                    f"cannot decrypt {what}: wrong key (the key in secrets.key_file is not the "
                    f"one these secrets were encrypted with: they name key id {kid}, the "
                    f"keyring has {', '.join(self.key_ids)}); {_HOW_TO_ADD_AN_OLD_KEY}"
                )
            candidates = [self._keys[kid]]
            body = token[len(_V2) + len(kid) + 1 :]
        elif token.startswith(_V1):
            candidates = list(self._keys.values())
            body = token[len(_V1) :]
        else:
            raise SecretKeyError(f"cannot decrypt {what}: not a v1/v2 token (unknown format)")
        try:
            raw = base64.b64decode(body, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise SecretKeyError(f"cannot decrypt {what}: token is not valid base64") from None
        if len(raw) < NONCE_BYTES + _TAG_BYTES:
            raise SecretKeyError(f"cannot decrypt {what}: token is truncated")
        for aead in candidates:
            try:
                plain = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad or None)
            except InvalidTag:
                continue
            return plain.decode()
        if token.startswith(_V2):
            # The named key is in the ring: not a key problem.
            raise SecretKeyError(
                f"cannot decrypt {what}: the stored value was altered or copied from another "
                f"row (its key id {token_key_id(token)} is in the keyring)"
            )
        # GCM cannot tell a wrong key from tampering or a value moved to another row; for
        # an old v1 token the common case is the wrong key, so lead with that.
        raise SecretKeyError(
            f"cannot decrypt {what}: wrong key (the key in secrets.key_file is not the one "
            f"these secrets were encrypted with; keyring key ids {', '.join(self.key_ids)}), "
            "or the stored value was altered or copied from another row"
        )


# The name the code used before the keyring; a ring of one key behaves as the old box.
SecretBox = Keyring


def parse_key(text: str, *, source: str) -> bytes:
    """Decode a key written as 64 hex characters or base64 (std or url-safe) of 32 bytes.

    Error messages describe the shape of what was found, never its content.
    """
    s = text.strip()
    if not s:
        raise SecretKeyError(f"{source}: the key is empty; {_HOW_TO_GET_A_KEY}")
    # Hex first: 64 hex digits are also valid base64 (of 48 bytes), so order matters.
    if len(s) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(s)
        except ValueError:
            pass
    try:
        key = base64.b64decode(s.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) == KEY_BYTES:
        return key
    raise SecretKeyError(
        f"{source}: expected a {KEY_BYTES}-byte key written as 64 hex characters or base64 "
        f"(44 characters), got {len(s)} characters that are neither; "
        "'paymentd keygen --out PATH' writes a valid one"
    )


def load_key(cfg: SecretsConfig) -> bytes:
    """The current key from ``secrets.key`` (env ``PAYMENTD_SECRETS_KEY``, credential
    ``secrets_key``) or ``secrets.key_file``. Never generates one: a missing key is an error
    that says what to do.
    """
    if cfg.key:
        return parse_key(cfg.key.reveal(), source="secrets.key (PAYMENTD_SECRETS_KEY)")
    if not cfg.key_file:
        raise SecretKeyError(f"no encryption key configured: {_HOW_TO_GET_A_KEY}")
    return read_key_file(Path(cfg.key_file), setting="secrets.key_file")


def load_keyring(cfg: SecretsConfig) -> Keyring:
    """The current key plus the older ones (``old_key_files``, ``old_keys``)."""
    older = [
        parse_key(k.reveal(), source=f"secrets.old_keys[{i}]") for i, k in enumerate(cfg.old_keys)
    ]
    older += [read_key_file(Path(p), setting="secrets.old_key_files") for p in cfg.old_key_files]
    return Keyring(load_key(cfg), older)


def read_key_file(path: Path, *, setting: str) -> bytes:
    """Read a key file, refusing one that group or others can access (like ssh does)."""
    source = f"{setting} {path}"
    if setting == "secrets.old_key_files":
        how = (
            "restore it, or remove it from secrets.old_key_files "
            "('paymentd secrets status' shows which key ids stored secrets use)"
        )
    else:
        how = _HOW_TO_GET_A_KEY
    try:
        # Open first, then fstat the descriptor we read from, so the mode we check is the
        # mode of the file we use (no check-then-open race).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SecretKeyError(f"{source}: key file not found; {how}") from None
    except PermissionError:
        raise SecretKeyError(
            f"{source}: permission denied; the key file must be readable by the user "
            "paymentd runs as (or pass it with systemd LoadCredential=secrets_key:PATH)"
        ) from None
    except OSError as exc:
        raise SecretKeyError(f"{source}: cannot open key file: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretKeyError(f"{source}: not a regular file")
        if st.st_mode & 0o077:
            # Like ssh with a private key: a key others can read is not a secret any more.
            raise SecretKeyError(
                f"{source}: permissions {stat.S_IMODE(st.st_mode):04o} are too open; the key "
                f"must not be accessible by group or others: run 'chmod 600 {path}'"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(4096)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise SecretKeyError(
            f"{source}: expected 64 hex characters or base64 text, found binary data"
        ) from None
    return parse_key(text, source=source)


def keygen(path: Path, *, force: bool = False) -> None:
    """Write a new random key (hex + newline) to ``path`` with mode 0600.

    Refuses to replace an existing file unless ``force``: overwriting the key makes every
    secret encrypted with it unreadable. The file is never visible with looser permissions
    or partial content: it is created with ``O_EXCL`` and mode 0600 (and, when forcing, as
    a temporary file renamed over the old one).
    """
    content = (os.urandom(KEY_BYTES).hex() + "\n").encode()
    target = path if not force else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise SecretKeyError(
            f"{path}: refusing to overwrite an existing key file (secrets encrypted with it "
            "would become unreadable); pass --force only if you mean to replace it"
        ) from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed bits; make it exactly 0600
        os.write(fd, content)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    os.close(fd)
    if force:
        try:
            os.replace(target, path)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    # Make the new directory entry durable too, so a crash cannot leave no key behind.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def verify_key(db: Executor, box: Keyring) -> None:
    """Start-up check that the keyring decrypts the stored OLT passwords.

    Raises ``SecretKeyError`` when a stored password names a key id that is not in the
    ring (a key was dropped before ``secrets rotate`` moved its secrets), or when there are
    stored passwords and none of them decrypts: that is a wrong key, and starting anyway
    would only fail later, per device, at the moment a subscriber is waiting to be
    reconnected. A few rows failing while others decrypt under a key in the ring is not a
    key problem (a value was altered or copied by hand): those are logged here and fail
    when that device is used. No stored passwords: nothing to check.
    """
    rows: list[Any] = await db.fetch("SELECT name, password_enc FROM olt_devices ORDER BY id")
    if not rows:
        return
    named = {token_key_id(r["password_enc"]) for r in rows}
    missing = sorted(kid for kid in named if kid is not None and kid not in box.key_ids)
    if missing:
        raise SecretKeyError(
            f"wrong key: the stored OLT passwords are encrypted with key id(s) "
            f"{', '.join(missing)}, which "
            f"the keyring does not have (its key ids: {', '.join(box.key_ids)}); "
            + _HOW_TO_ADD_AN_OLD_KEY
        )
    bad: list[str] = []
    for row in rows:
        try:
            box.decrypt(row["password_enc"], aad=olt_aad(row["name"]))
        except SecretKeyError:
            bad.append(row["name"])
    if len(bad) == len(rows):
        raise SecretKeyError(
            f"cannot decrypt the stored OLT passwords ({len(rows)} device(s)): wrong key "
            f"({_KEY_SOURCES} is not the one these secrets were encrypted with; this key's "
            f"id is {box.key_id}); restore the original key (or list it in "
            "secrets.old_key_files), or re-enter each device's password with "
            "'paymentd olt update NAME --password-file ...'"
        )
    if bad:
        log.warning(
            "OLT password of %s cannot be decrypted with key %s (altered or copied between "
            "rows?); re-enter it with 'paymentd olt update NAME --password-file ...'",
            ", ".join(bad),
            box.key_id,
        )


@dataclass(frozen=True)
class EncryptedColumn:
    """A column of ``Keyring`` tokens that ``secrets rotate`` / ``secrets status`` cover.

    ``aad`` builds the associated data a row's token was sealed with, from ``aad_columns``
    of that row. Table and column names are code, never user input.
    """

    table: str
    id_column: str
    column: str
    aad_columns: tuple[str, ...]
    aad: Callable[[Mapping[str, Any]], bytes]

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column}"


# Every stored ciphertext. A feature that stores a new kind (webhook signing secrets,
# payment provider keys) adds its column here, so rotation cannot forget it.
ENCRYPTED_COLUMNS: tuple[EncryptedColumn, ...] = (
    EncryptedColumn(
        "olt_devices", "id", "password_enc", ("name",), lambda r: olt_aad(r["name"], "password")
    ),
    EncryptedColumn(
        "olt_devices",
        "id",
        "enable_password_enc",
        ("name",),
        lambda r: olt_aad(r["name"], "enable_password"),
    ),
    # Webhook signing secrets (daemon.webhooks.endpoints.secret_aad: bound to the row id).
    EncryptedColumn(
        "webhook_secrets",
        "id",
        "secret_enc",
        ("id",),
        lambda r: f"webhook_secret:{r['id']}".encode(),
    ),
    # Stripe's webhook signing secrets (daemon.payments.stripe_secrets.aad).
    EncryptedColumn(
        "stripe_webhook_secrets",
        "id",
        "secret_enc",
        ("id",),
        lambda r: f"stripe_webhook_secret:{r['id']}".encode(),
    ),
)


@dataclass(frozen=True)
class RotationReport:
    key_id: str
    rewritten: dict[str, int]  # column label -> tokens re-encrypted
    current: dict[str, int]  # column label -> tokens already under the current key

    @property
    def total_rewritten(self) -> int:
        return sum(self.rewritten.values())


async def rotate(
    db: Database, box: Keyring, columns: Sequence[EncryptedColumn] = ENCRYPTED_COLUMNS
) -> RotationReport:
    """Re-encrypt every stored token that is not yet under the current key, in one
    transaction: either every secret moves to the current key or none does (a token that
    does not decrypt aborts the whole rotation, naming its row). Idempotent: a second run
    rewrites nothing. Rows are locked (``FOR UPDATE``) so a concurrent edit cannot be lost.
    """
    rewritten: dict[str, int] = {}
    current: dict[str, int] = {}
    async with db.transaction() as conn:
        for col in columns:
            extra = "".join(f", {c}" for c in col.aad_columns if c != col.id_column)
            rows = await conn.fetch(
                f"SELECT {col.id_column}, {col.column}{extra} FROM {col.table} "
                f"WHERE {col.column} IS NOT NULL ORDER BY {col.id_column} FOR UPDATE"
            )
            rewritten[col.label] = current[col.label] = 0
            for row in rows:
                token: str = row[col.column]
                if box.is_current(token):
                    current[col.label] += 1
                    continue
                aad = col.aad(row)
                try:
                    plain = box.decrypt(token, aad=aad)
                except SecretKeyError as exc:
                    raise SecretKeyError(
                        f"{col.label} of {col.table}.{col.id_column}={row[col.id_column]}: {exc}; "
                        "nothing was re-encrypted"
                    ) from None
                await conn.execute(
                    f"UPDATE {col.table} SET {col.column} = $1 WHERE {col.id_column} = $2",
                    box.encrypt(plain, aad=aad),
                    row[col.id_column],
                )
                rewritten[col.label] += 1
    return RotationReport(box.key_id, rewritten, current)


async def key_usage(
    db: Executor, columns: Sequence[EncryptedColumn] = ENCRYPTED_COLUMNS
) -> dict[str, dict[str, int]]:
    """For each column, how many stored tokens name each key id (``"v1"``: legacy tokens
    that name none)."""
    usage: dict[str, dict[str, int]] = {}
    for col in columns:
        rows = await db.fetch(
            f"SELECT CASE WHEN {col.column} LIKE 'v2:%' THEN split_part({col.column}, ':', 2) "
            f"ELSE 'v1' END AS kid, count(*) AS n FROM {col.table} "
            f"WHERE {col.column} IS NOT NULL GROUP BY 1 ORDER BY 1"
        )
        usage[col.label] = {r["kid"]: r["n"] for r in rows}
    return usage
