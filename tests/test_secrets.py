"""Secrets at rest: the key is the operator's, and a wrong key is reported as such."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from daemon.platform.config import OltConfig
from daemon.platform.secrets import SecretBox, SecretKeyError, keygen, load_key, olt_aad

KEY = bytes(range(32))


def test_roundtrip_with_a_fresh_nonce_each_time() -> None:
    box = SecretBox(KEY)
    a = box.encrypt("s3cret-ñ", aad=b"olt:a:password")
    b = box.encrypt("s3cret-ñ", aad=b"olt:a:password")
    assert a.startswith("v1:") and b.startswith("v1:")
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
    for bad in ("plain", "v1:!!!", "v1:" + base64.urlsafe_b64encode(b"short").decode()):
        with pytest.raises(SecretKeyError):
            box.decrypt(bad)
    raw = bytearray(base64.urlsafe_b64decode(token[3:]))
    raw[-1] ^= 1
    with pytest.raises(SecretKeyError):
        box.decrypt("v1:" + base64.urlsafe_b64encode(bytes(raw)).decode())


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
    first = load_key(OltConfig(key_file=str(path)))
    assert first == bytes.fromhex(text.strip())

    with pytest.raises(SecretKeyError, match="refusing to overwrite"):
        keygen(path)
    assert path.read_text() == text

    keygen(path, force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(OltConfig(key_file=str(path))) != first
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no temp file left


def test_env_key_hex_or_base64_wins_over_the_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.key")
    assert load_key(OltConfig(key=KEY.hex(), key_file=missing)) == KEY
    assert load_key(OltConfig(key=KEY.hex().upper() + "\n", key_file=missing)) == KEY
    assert load_key(OltConfig(key=base64.b64encode(KEY).decode(), key_file=missing)) == KEY
    assert load_key(OltConfig(key=base64.urlsafe_b64encode(KEY).decode())) == KEY


def test_missing_key_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    with pytest.raises(SecretKeyError) as info:
        load_key(OltConfig(key_file=str(path)))
    msg = str(info.value)
    assert str(path) in msg and "not found" in msg
    assert "paymentd keygen --out PATH" in msg and "olt.key_file" in msg
    assert "PAYMENTD_OLT_KEY" in msg
    assert not path.exists()  # and, above all, no key was made up


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(0o640)
    with pytest.raises(SecretKeyError, match=f"0640 are too open.*chmod 600 {path}"):
        load_key(OltConfig(key_file=str(path)))
    path.chmod(0o600)
    assert load_key(OltConfig(key_file=str(path))) == KEY


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
        load_key(OltConfig(key=text))
    assert "olt.key" in str(info.value)
    if text.strip():
        assert text not in str(info.value)
    path = tmp_path / "k"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    with pytest.raises(SecretKeyError, match=str(path)):
        load_key(OltConfig(key_file=str(path)))


def test_no_key_configured_at_all() -> None:
    with pytest.raises(SecretKeyError, match="paymentd keygen"):
        load_key(OltConfig(key="", key_file=""))
