"""Secrets at rest: the key is the operator's, and a wrong key is reported as such."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daemon.platform.config import Secret, SecretsConfig
from daemon.platform.secrets import (
    Keyring,
    SecretBox,
    SecretKeyError,
    key_id,
    keygen,
    load_key,
    load_keyring,
    olt_aad,
)

KEY = bytes(range(32))
KEY_B = bytes(range(100, 132))


def _v1_token(key: bytes, plaintext: str, aad: bytes) -> str:
    """A token as written before the keyring (no key id), built independently of our code."""
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), aad)
    return "v1:" + base64.urlsafe_b64encode(nonce + sealed).decode()


def _write_key(path: Path, key: bytes) -> Path:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    os.write(fd, key.hex().encode() + b"\n")
    os.close(fd)
    return path


def test_a_keyring_encrypts_with_the_current_key_and_decrypts_with_the_named_one() -> None:
    aad = olt_aad("olt1")
    under_a = Keyring(KEY).encrypt("pw-a", aad=aad)
    assert under_a.startswith(f"v2:{key_id(KEY)}:")
    ring = Keyring(KEY_B, [KEY])
    assert ring.key_id == key_id(KEY_B) and ring.key_ids == (key_id(KEY_B), key_id(KEY))
    assert ring.decrypt(under_a, aad=aad) == "pw-a"
    under_b = ring.encrypt("pw-b", aad=aad)
    assert under_b.startswith(f"v2:{key_id(KEY_B)}:")
    assert ring.is_current(under_b) and not ring.is_current(under_a)
    # A ring without B says which key id is missing and what to do.
    with pytest.raises(SecretKeyError) as info:
        Keyring(KEY).decrypt(under_b, aad=aad)
    msg = str(info.value)
    assert f"key id {key_id(KEY_B)}" in msg and "secrets.old_key_files" in msg
    assert KEY_B.hex() not in msg and KEY.hex() not in repr(ring)


def test_v1_tokens_still_decrypt_with_any_key_in_the_ring() -> None:
    aad = olt_aad("olt1")
    legacy = _v1_token(KEY, "pw-old", aad)
    assert SecretBox(KEY).decrypt(legacy, aad=aad) == "pw-old"  # current key
    assert Keyring(KEY_B, [KEY]).decrypt(legacy, aad=aad) == "pw-old"  # an old key
    with pytest.raises(SecretKeyError, match="wrong key"):
        Keyring(KEY_B).decrypt(legacy, aad=aad)
    with pytest.raises(SecretKeyError):
        Keyring(KEY_B, [KEY]).decrypt(legacy, aad=olt_aad("olt2"))  # still bound to its row


def test_load_keyring_reads_old_key_files_and_old_keys(tmp_path: Path) -> None:
    current = _write_key(tmp_path / "new.key", KEY_B)
    old = _write_key(tmp_path / "old.key", KEY)
    third = bytes(range(50, 82))
    ring = load_keyring(
        SecretsConfig(
            key_file=str(current), old_key_files=(str(old),), old_keys=(Secret(third.hex()),)
        )
    )
    assert ring.key_ids == (key_id(KEY_B), key_id(third), key_id(KEY))
    missing = tmp_path / "gone.key"
    with pytest.raises(SecretKeyError, match=r"secrets.old_key_files .*gone.key: key file not fo"):
        load_keyring(SecretsConfig(key_file=str(current), old_key_files=(str(missing),)))
    old.chmod(0o644)
    with pytest.raises(SecretKeyError, match="too open"):
        load_keyring(SecretsConfig(key_file=str(current), old_key_files=(str(old),)))
    with pytest.raises(SecretKeyError, match=r"secrets.old_keys\[0\]") as info:
        load_keyring(SecretsConfig(key_file=str(current), old_keys=(Secret("not-a-key"),)))
    assert "not-a-key" not in str(info.value)


def test_roundtrip_with_a_fresh_nonce_each_time() -> None:
    box = SecretBox(KEY)
    a = box.encrypt("s3cret-ñ", aad=b"olt:a:password")
    b = box.encrypt("s3cret-ñ", aad=b"olt:a:password")
    assert a.startswith(f"v2:{box.key_id}:") and b.startswith(f"v2:{box.key_id}:")
    assert a != b  # random nonce: equal passwords do not look equal at rest
    assert "s3cret" not in a
    assert box.decrypt(a, aad=b"olt:a:password") == "s3cret-ñ"
    assert box.decrypt(box.encrypt("")) == ""


def test_wrong_key_is_named_as_the_cause() -> None:
    token = SecretBox(KEY).encrypt("pw", aad=olt_aad("olt1"))
    other = SecretBox(bytes(32))
    with pytest.raises(SecretKeyError, match=r"cannot decrypt .*olt1.*: wrong key \(the key in"):
        other.decrypt(token, aad=olt_aad("olt1"))


def test_ciphertext_is_bound_to_its_row_and_column() -> None:
    box = SecretBox(KEY)
    token = box.encrypt("pw", aad=olt_aad("olt1"))
    # Copied to another device, or from password to enable_password: refused.
    with pytest.raises(SecretKeyError):
        box.decrypt(token, aad=olt_aad("olt2"))
    with pytest.raises(SecretKeyError):
        box.decrypt(token, aad=olt_aad("olt1", "enable_password"))


def test_malformed_and_tampered_tokens_are_refused() -> None:
    box = SecretBox(KEY)
    token = box.encrypt("pw")
    prefix = f"v2:{box.key_id}:"
    short = base64.urlsafe_b64encode(b"short").decode()
    for bad in (
        "plain",
        "v1:!!!",
        "v1:" + short,
        "v2:",
        "v2:nokeyid",
        prefix + "!!!",
        prefix + short,
    ):
        with pytest.raises(SecretKeyError):
            box.decrypt(bad)
    raw = bytearray(base64.urlsafe_b64decode(token[len(prefix) :]))
    raw[-1] ^= 1
    with pytest.raises(SecretKeyError, match="altered or copied"):
        box.decrypt(prefix + base64.urlsafe_b64encode(bytes(raw)).decode())


def test_box_rejects_a_short_key() -> None:
    with pytest.raises(SecretKeyError, match="32 bytes"):
        SecretBox(b"x" * 16)


def test_keygen_writes_a_0600_hex_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    old_umask = os.umask(0)  # even a permissive umask must not loosen the mode
    try:
        keygen(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(text) == 65 and text.endswith("\n")
    first = load_key(SecretsConfig(key_file=str(path)))
    assert first == bytes.fromhex(text.strip())

    with pytest.raises(SecretKeyError, match="refusing to overwrite"):
        keygen(path)
    assert path.read_text() == text

    keygen(path, force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(SecretsConfig(key_file=str(path))) != first
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no temp file left


def test_env_key_hex_or_base64_wins_over_the_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.key")
    assert load_key(SecretsConfig(key=KEY.hex(), key_file=missing)) == KEY
    assert load_key(SecretsConfig(key=KEY.hex().upper() + "\n", key_file=missing)) == KEY
    assert load_key(SecretsConfig(key=base64.b64encode(KEY).decode(), key_file=missing)) == KEY
    assert load_key(SecretsConfig(key=base64.urlsafe_b64encode(KEY).decode())) == KEY


def test_missing_key_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    with pytest.raises(SecretKeyError) as info:
        load_key(SecretsConfig(key_file=str(path)))
    msg = str(info.value)
    assert str(path) in msg and "not found" in msg
    assert "paymentd keygen --out PATH" in msg and "secrets.key_file" in msg
    assert "PAYMENTD_SECRETS_KEY" in msg
    assert not path.exists()  # and, above all, no key was made up


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(0o640)
    with pytest.raises(SecretKeyError, match=f"0640 are too open.*chmod 600 {path}"):
        load_key(SecretsConfig(key_file=str(path)))
    path.chmod(0o600)
    assert load_key(SecretsConfig(key_file=str(path))) == KEY


@pytest.mark.parametrize(
    "text",
    [
        KEY.hex()[:-2],  # 31 bytes of hex
        "zz" * 32,  # 64 characters, not hex, not base64 of 32 bytes
        base64.b64encode(b"x" * 16).decode(),  # base64 of the wrong length
        "   ",
    ],
)
def test_malformed_keys_are_refused_without_echoing_them(text: str, tmp_path: Path) -> None:
    with pytest.raises(SecretKeyError) as info:
        load_key(SecretsConfig(key=text))
    assert "secrets.key" in str(info.value)
    if text.strip():
        assert text not in str(info.value)
    path = tmp_path / "k"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    with pytest.raises(SecretKeyError, match=str(path)):
        load_key(SecretsConfig(key_file=str(path)))


def test_no_key_configured_at_all() -> None:
    with pytest.raises(SecretKeyError, match="paymentd keygen"):
        load_key(SecretsConfig(key="", key_file=""))
