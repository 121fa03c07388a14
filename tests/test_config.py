"""Configuration: defaults, overrides, and one clear message per mistake."""

from __future__ import annotations

import math
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

from daemon.platform import config
from daemon.platform.config import ConfigError, Secret, SecretUrl

ROOT = Path(__file__).resolve().parent.parent


def test_example_documents_every_key_with_its_default() -> None:
    data = tomllib.loads((ROOT / "config.toml.example").read_text())
    loaded = config.from_mapping(data, env={})
    assert loaded == config.Config().replace(source=loaded.source)
    for name, cls in config.SECTIONS.items():
        assert set(data[name]) == {f.name for f in msgspec.structs.fields(cls)}, name


def test_environment_file_and_credential_overrides(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "uisp_app_key").write_text("from-credential")
    env = {
        "PAYMENTD_HTTP_PORT": "9090",
        "PAYMENTD_HTTP_ADMIN_TOKEN_FILE": str(secret),
        "CREDENTIALS_DIRECTORY": str(creds),
        "PAYMENTD_UISP_APP_KEY": "loses-to-credential",
    }
    cfg = config.from_mapping({"http": {"port": 8000}}, env=env)
    assert cfg.http.port == 9090
    assert cfg.http.admin_token.reveal() == "from-file"
    assert cfg.uisp.app_key.reveal() == "from-credential"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"http": {"port": "eighty"}}, "http.port: expected an integer, got 'eighty'"),
        ({"http": {"port": 18081.5}}, "http.port: expected an integer, got 18081.5"),
        ({"http": {"port": True}}, "http.port: expected an integer, got True"),
        ({"http": {"port": 70000}}, "http.port: must be 0-65535"),
        ({"http": {"port": -1}}, "http.port: must be 0-65535"),
        ({"http": {"max_body_bytes": 0}}, "http.max_body_bytes: must be at least 1, got 0"),
        ({"http": {"host": ""}}, "http.host: must not be empty"),
        ({"uisp": {"timeout_seconds": 0}}, "uisp.timeout_seconds: must be more than 0, got 0"),
        ({"olt": {"connect_timeout_seconds": -5.0}}, "olt.connect_timeout_seconds: must be more"),
        ({"olt": {"connect_timeout_seconds": "5"}}, "olt.connect_timeout_seconds: expected a nu"),
        (
            {"olt": {"connect_timeout_seconds": math.nan}},
            "olt.connect_timeout_seconds: must be a finite",
        ),
        ({"sms": {"timeout_seconds": math.inf}}, "sms.timeout_seconds: must be a finite number"),
        ({"database": {"pool_min": -math.inf}}, "database.pool_min: must be a finite number"),
        ({"database": {"pool_min": 3, "pool_max": 2}}, "database.pool_max: must be >="),
        ({"database": {"visibility_timeout_seconds": 0}}, "database.visibility_timeout_seconds"),
        ({"daemon": {"log_level": "loud"}}, "daemon.log_level: must be one of debug, info"),
        ({"http": 5}, "[http]: must be a table"),
        ({"secrets": {"old_key_files": "/a"}}, "secrets.old_key_files: expected an array"),
        ({"uisp": {"base_url": "uisp.local"}}, "uisp.base_url: expected an http(s) URL"),
        ({"uisp": {"payment_action": "pray"}}, "uisp.payment_action: must be one of"),
        ({"payments": {"uisp_mode": "pray"}}, "payments.uisp_mode: must be one of"),
        (
            {"payments": {"uisp_mode": "reconnect", "uisp_record_payments": True}},
            "payments.uisp_record_payments: contradicts payments.uisp_mode = 'reconnect'",
        ),
        ({"sms": {"template": "Hi {name}"}}, "sms.template: unknown placeholder"),
        ({"olt": {"max_attempts": 0}}, "max_attempts"),
        ({"http": {"prot": 1}}, "http.prot: unknown key"),
        ({"htp": {}}, "[htp]: unknown section"),
        ({"database": {"url": "mysql://x"}}, "database.url"),
        (
            {"daemon": {"migrate_on_start": "perhaps"}},
            "daemon.migrate_on_start: expected true or false",
        ),
    ],
)
def test_each_mistake_names_its_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        config.from_mapping(data, env={})


@pytest.mark.parametrize(
    ("data", "action"),
    [
        ({}, "off"),
        ({"uisp_record_payments": True}, "record"),
        ({"uisp_mode": "record", "uisp_record_payments": True}, "record"),
        ({"uisp_mode": "reconnect"}, "reconnect"),
        ({"uisp_mode": "off"}, "off"),
    ],
)
def test_uisp_mode_keeps_the_older_switch_working(data: dict[str, object], action: str) -> None:
    assert config.from_mapping({"payments": data}, env={}).payments.uisp_action == action


# Every *_seconds setting is a timeout or an interval: 0 would mean "never" or "spin".
SECONDS_KEYS = [
    f"{name}.{f.name}"
    for name, cls in config.SECTIONS.items()
    for f in msgspec.structs.fields(cls)
    if f.name.endswith("_seconds")
]


@pytest.mark.parametrize("key", SECONDS_KEYS)
@pytest.mark.parametrize("value", [0, 0.0, -1, math.nan, math.inf])
def test_every_seconds_setting_must_be_positive_and_finite(key: str, value: float) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError) as info:
        config.from_mapping({section: {name: value}}, env={})
    assert str(info.value).startswith(f"{key}: ")  # "must be ..." or, for an int, "expected"


def test_environment_values_are_converted_and_checked_naming_the_variable() -> None:
    env = {
        "PAYMENTD_HTTP_PORT": "9090",
        "PAYMENTD_OLT_CONNECT_TIMEOUT_SECONDS": "2.5",
        "PAYMENTD_SMS_TEST_MODE": "true",
        "PAYMENTD_DATABASE_POOL_MAX": "20",
    }
    cfg = config.from_mapping({}, env=env)
    assert (cfg.http.port, cfg.olt.connect_timeout_seconds) == (9090, 2.5)
    assert cfg.sms.test_mode is True and cfg.database.pool_max == 20
    for var, value, message in [
        ("PAYMENTD_HTTP_PORT", "18081.5", "http.port: expected an integer, got '18081.5'"),
        ("PAYMENTD_HTTP_PORT", "65536", "http.port: must be 0-65535"),
        ("PAYMENTD_UISP_TIMEOUT_SECONDS", "0", "uisp.timeout_seconds: must be more than 0"),
        ("PAYMENTD_OLT_IDLE_CLOSE_SECONDS", "nan", "olt.idle_close_seconds: must be a finite"),
        ("PAYMENTD_DAEMON_SHUTDOWN_GRACE_SECONDS", "inf", "daemon.shutdown_grace_seconds: must"),
        ("PAYMENTD_SMS_TEST_MODE", "maybe", "sms.test_mode: expected true or false"),
    ]:
        with pytest.raises(ConfigError) as info:
            config.from_mapping({}, env={var: value})
        assert str(info.value).startswith(message), (var, value, str(info.value))
        assert str(info.value).endswith(f"(from {var})")


SECRETS = {
    "http": {"admin_token": "admin-hunter2"},
    "uisp": {"app_key": "app-hunter2", "webhook_token": "hook-hunter2"},
    "sms": {"token": "sms-hunter2"},
    "secrets": {"key": "key-hunter2", "old_keys": ["old-hunter2"]},
    "database": {"url": "postgresql://paymentd:db-hunter2@db.example/paymentd"},
}


def test_secrets_never_show_in_a_repr_or_str() -> None:
    cfg = config.from_mapping(SECRETS, env={})
    for text in (repr(cfg), str(cfg), repr(cfg.http), f"{cfg.uisp.app_key}"):
        assert "hunter2" not in text
    assert "Secret('***')" in repr(cfg.http)
    assert str(cfg.database.url) == "postgresql://paymentd:***@db.example/paymentd"
    # The values stay usable where they are needed, explicitly.
    assert cfg.http.admin_token.reveal() == "admin-hunter2"
    assert cfg.secrets.old_keys[0].reveal() == "old-hunter2"
    assert cfg.database.url.reveal() == "postgresql://paymentd:db-hunter2@db.example/paymentd"
    assert "hunter2" not in str(SecretUrl("postgres://u@h/db?password=db-hunter2&sslmode=require"))
    # An empty secret says it is empty (that disables what it protects), nothing more.
    assert repr(config.HttpConfig().admin_token) == "Secret('')" and not Secret("")
    # Code that builds a section with a plain string still gets a masked secret.
    assert "hunter2" not in repr(config.HttpConfig(admin_token="admin-hunter2"))


@pytest.mark.parametrize(
    ("data", "env"),
    [
        ({"database": {"url": "mysql://paymentd:db-hunter2@db/paymentd"}}, {}),
        ({"http": {"admin_tokn": "admin-hunter2"}}, {}),
        ({"http": {"admin_token": ["admin-hunter2"]}}, {}),
        ({"secrets": {"old_keys": ["ok", 5]}, "sms": {"token": "sms-hunter2"}}, {}),
        ({}, {"PAYMENTD_DATABASE_URL": "mysql://u:db-hunter2@h/db"}),
        ({"olt": {"key": "key-hunter2"}, "secrets": {"key": "other-hunter2"}}, {}),
    ],
)
def test_an_error_about_a_secret_never_shows_it(
    data: dict[str, object], env: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as info:
        config.from_mapping(data, env=env)
    assert "hunter2" not in str(info.value)


def test_the_old_olt_key_settings_still_work_with_a_notice(tmp_path: Path) -> None:
    cfg = config.from_mapping({"olt": {"key_file": "/etc/paymentd/old.key"}}, env={})
    assert cfg.secrets.key_file == "/etc/paymentd/old.key"
    assert cfg.notices == (
        "olt.key_file is deprecated: it is read as secrets.key_file (the keyring's current "
        "key); move it there ([olt] key_file -> [secrets] key_file)",
    )
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "olt_key").write_text("k" * 64)
    cfg = config.from_mapping({}, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.secrets.key.reveal() == "k" * 64
    assert "credential olt_key -> credential secrets_key" in cfg.notices[0]
    # PAYMENTD_OLT_KEY_FILE is the key_file setting itself, as before.
    cfg = config.from_mapping({}, env={"PAYMENTD_OLT_KEY_FILE": "/run/k"})
    assert cfg.secrets.key_file == "/run/k" and not cfg.secrets.key
    assert "PAYMENTD_OLT_KEY_FILE -> PAYMENTD_SECRETS_KEY_FILE" in cfg.notices[0]
    # Both, saying different things: which one wins would be a guess.
    with pytest.raises(ConfigError, match=r"olt.key_file \(from PAYMENTD_OLT_KEY_FILE\): dep"):
        config.from_mapping(
            {"secrets": {"key_file": "/etc/paymentd/secret.key"}},
            env={"PAYMENTD_OLT_KEY_FILE": "/run/k"},
        )
    # The old example's lines (defaults) do not contradict a [secrets] key set elsewhere.
    cfg = config.from_mapping(
        {"olt": {"key_file": "/etc/paymentd/secret.key", "key": ""}},
        env={"PAYMENTD_SECRETS_KEY_FILE": "/run/new.key"},
    )
    assert cfg.secrets.key_file == "/run/new.key" and not cfg.secrets.key
    assert len(cfg.notices) == 2
    assert config.from_mapping({}, env={}).notices == ()


def test_to_toml_round_trips_including_secrets_and_key_lists() -> None:
    cfg = config.from_mapping(
        {**SECRETS, "secrets": {"old_key_files": ["/a", "/b"], "key": "k"}}, env={}
    )
    again = config.from_mapping(tomllib.loads(config.to_toml(cfg)), env={})
    assert again == cfg.replace(source=again.source)


def test_cli_reports_a_config_error_in_one_line_and_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('[http]\nport = "eighty"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "paymentd: error: http.port: expected an integer, got 'eighty'"
    assert "Traceback" not in proc.stderr


def test_cli_missing_config_file_says_what_to_do(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "config file not found" in proc.stderr and "config.toml.example" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_config_warns_about_the_old_key_setting_and_shows_no_password(
    tmp_path: Path,
) -> None:
    from daemon.platform.secrets import keygen

    key = tmp_path / "secret.key"
    keygen(key)
    cfg = tmp_path / "config.toml"
    # Port 1: nothing listens, so check-config reports the database as unreachable.
    cfg.write_text(
        '[database]\nurl = "postgresql://paymentd:db-hunter2@127.0.0.1:1/paymentd"\n'
        f'[olt]\nkey_file = "{key}"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert "warning: olt.key_file is deprecated: it is read as secrets.key_file" in proc.stdout
    # Whether the unreachable database is a warning or an error is not this test's concern;
    # that the password is in neither is.
    assert "127.0.0.1" in proc.stdout + proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
