"""Configuration: defaults, overrides, and one clear message per mistake."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from daemon.platform import config
from daemon.platform.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_example_documents_every_key_with_its_default() -> None:
    data = tomllib.loads((ROOT / "config.toml.example").read_text())
    loaded = config.from_mapping(data, env={})
    assert loaded == config.Config().replace(source=loaded.source)
    for name, cls in config.SECTIONS.items():
        assert set(data[name]) == set(cls.__dataclass_fields__), name


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
    assert cfg.http.admin_token == "from-file"
    assert cfg.uisp.app_key == "from-credential"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"http": {"port": "eighty"}}, "http.port: expected an integer"),
        ({"http": {"port": 70000}}, "http.port: must be 0-65535"),
        ({"uisp": {"base_url": "uisp.local"}}, "uisp.base_url: expected an http(s) URL"),
        ({"uisp": {"payment_action": "pray"}}, "uisp.payment_action: must be one of"),
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
