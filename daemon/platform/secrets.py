"""Secrets at rest: AES-256-GCM with a key the operator provides, never one we invent.

The system we replace generated its encryption key silently when none was set, so a
restart with a lost environment variable produced a *new* key and every stored OLT
password became unreadable without anyone being told. Here a missing or malformed key is
a start-up error that says what to run, and ``keygen`` is only ever an explicit command.

Token format: ``v1:`` + base64url(nonce(12) || ciphertext || tag(16)). Each value is bound
to the row and column it belongs to through the AEAD's associated data (``olt_aad``), so a
ciphertext copied into another device's row (or from ``password`` into
``enable_password``) fails to decrypt instead of logging into the wrong OLT.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daemon.platform.config import OltConfig

if TYPE_CHECKING:
    from daemon.platform.db import Executor

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16
_PREFIX = "v1:"

_KEY_SOURCES = "the key in olt.key_file (or PAYMENTD_OLT_KEY)"
_HOW_TO_GET_A_KEY = (
    "run 'paymentd keygen --out PATH' and set olt.key_file = PATH, "
    "or set PAYMENTD_OLT_KEY (64 hex characters or base64 of 32 bytes); "
    "if secrets are already stored, use the key they were encrypted with"
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


class SecretBox:
    """Encrypts and decrypts short strings with AES-256-GCM under one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"encryption key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        # A non-secret fingerprint, so logs can say *which* key is in use without showing it.
        self.key_id = hashlib.sha256(b"paymentd key id\0" + key).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self.key_id!r})"

    def encrypt(self, plaintext: str, *, aad: bytes = b"") -> str:
        """Encrypt with a fresh random 96-bit nonce (safe far beyond our volumes)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), aad or None)
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, token: str, *, aad: bytes = b"") -> str:
        """Decrypt a ``v1:`` token; any failure is a ``SecretKeyError`` naming the cause."""
        what = f"secret {aad.decode(errors='replace')!r}" if aad else "secret"
        if not token.startswith(_PREFIX):
            raise SecretKeyError(f"cannot decrypt {what}: not a v1 token (unknown format)")
        try:
            raw = base64.b64decode(token[len(_PREFIX) :], altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise SecretKeyError(f"cannot decrypt {what}: token is not valid base64") from None
        if len(raw) < NONCE_BYTES + _TAG_BYTES:
            raise SecretKeyError(f"cannot decrypt {what}: token is truncated")
        try:
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad or None)
        except InvalidTag:
            # GCM cannot tell a wrong key from tampering or a value moved to another row;
            # by far the common case is the wrong key, so lead with that.
            raise SecretKeyError(
                f"cannot decrypt {what}: wrong key (the key in olt.key_file is not the one "
                f"these secrets were encrypted with; key id {self.key_id}), or the stored "
                "value was altered or copied from another row"
            ) from None
        return plain.decode()


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


def load_key(cfg: OltConfig) -> bytes:
    """The key from ``olt.key`` (env ``PAYMENTD_OLT_KEY``, credential ``olt_key``) or
    ``olt.key_file``. Never generates one: a missing key is an error that says what to do.
    """
    if cfg.key:
        return parse_key(cfg.key, source="olt.key (PAYMENTD_OLT_KEY)")
    if not cfg.key_file:
        raise SecretKeyError(f"no encryption key configured: {_HOW_TO_GET_A_KEY}")
    path = Path(cfg.key_file)
    source = f"olt.key_file {path}"
    try:
        # Open first, then fstat the descriptor we read from, so the mode we check is the
        # mode of the file we use (no check-then-open race).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SecretKeyError(f"{source}: key file not found; {_HOW_TO_GET_A_KEY}") from None
    except PermissionError:
        raise SecretKeyError(
            f"{source}: permission denied; the key file must be readable by the user "
            "paymentd runs as (or pass it with systemd LoadCredential=olt_key:PATH)"
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


async def verify_key(db: Executor, box: SecretBox) -> None:
    """Start-up check that ``box`` decrypts the stored OLT passwords.

    Raises ``SecretKeyError`` when there are stored passwords and none of them decrypts:
    that is a wrong key, and starting anyway would only fail later, per device, at the
    moment a subscriber is waiting to be reconnected. A few rows failing while others
    decrypt is not a key problem (a value was altered or copied by hand): those are
    logged here and fail when that device is used. No stored passwords: nothing to check.
    """
    rows: list[Any] = await db.fetch("SELECT name, password_enc FROM olt_devices ORDER BY id")
    if not rows:
        return
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
            f"id is {box.key_id}); restore the original key, or re-enter each device's "
            "password with 'paymentd olt update NAME --password ...'"
        )
    if bad:
        log.warning(
            "OLT password of %s cannot be decrypted with key %s (altered or copied between "
            "rows?); re-enter it with 'paymentd olt update NAME --password ...'",
            ", ".join(bad),
            box.key_id,
        )
