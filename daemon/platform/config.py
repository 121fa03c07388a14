"""Configuration: a TOML file, with every key overridable from the environment.

Precedence (highest first) for a key ``section.key``:

1. ``$PAYMENTD_<SECTION>_<KEY>_FILE`` — read the value from that file (secrets);
2. ``$CREDENTIALS_DIRECTORY/<section>_<key>`` — systemd ``LoadCredential=``;
3. ``$PAYMENTD_<SECTION>_<KEY>`` — the value itself;
4. the TOML file;
5. the default below.

Every problem is reported as one ``ConfigError`` naming the key, so the CLI can print a
single line that says what to fix.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A user mistake in the configuration; the message names the key."""


@dataclass(frozen=True)
class DaemonConfig:
    log_level: str = "info"
    # How long actors get to finish in-flight work after SIGTERM before being cancelled.
    shutdown_grace_seconds: float = 10.0
    migrate_on_start: bool = True
    # Supervisor: restart backoff doubles from min to max; a run this long resets it.
    restart_backoff_min_seconds: float = 0.5
    restart_backoff_max_seconds: float = 30.0
    restart_reset_after_seconds: float = 60.0
    # More restarts than this inside restart_reset_after_seconds makes /readyz fail.
    unhealthy_restarts: int = 5


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "postgresql://postgres@127.0.0.1:5432/paymentd"
    pool_min: int = 2
    pool_max: int = 10
    command_timeout_seconds: float = 30.0
    # Upper bound on how long a missed NOTIFY can delay work.
    safety_poll_seconds: float = 300.0
    # pgmq.enable_notify_insert throttle (leading edge only; consumers re-drain after it).
    notify_throttle_ms: int = 100
    # How long a read message stays invisible before another read may take it.
    visibility_timeout_seconds: int = 60


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1024 * 1024
    # Concurrent client connections; beyond it new ones get an instant 503 and close (a few
    # more are kept for /healthz, /readyz and webhooks). Lowered to fit the fd limit.
    max_connections: int = 1024
    # Bearer token for /api/v1/*; empty disables the admin API (it answers 503).
    admin_token: str = ""


@dataclass(frozen=True)
class UispConfig:
    # Base URL of the CRM API, e.g. https://uisp.example.com/crm/api/v1.0
    base_url: str = "https://uisp.example.com/crm/api/v1.0"
    app_key: str = ""
    # Secret path segment of POST /webhooks/uisp/{token}; empty disables the endpoint.
    webhook_token: str = ""
    timeout_seconds: float = 10.0
    # What a payment.add for a settled client with suspended services does:
    #   "cancel_suspend": PATCH cancel-suspend in UISP; its service.suspend_cancel webhook
    #                     then reactivates the ONU (UISP stays the source of truth).
    #   "reactivate_onu": reactivate the ONU directly and leave UISP as it is.
    payment_action: str = "cancel_suspend"
    # Confirm every webhook with GET /webhook-events/{uuid} before acting on it.
    verify_webhook_events: bool = True
    # Service custom attribute keys that say where the subscriber's ONU is.
    olt_attribute: str = "oltName"
    onu_attribute: str = "onuPort"  # value "frame/slot/port:onu", e.g. "0/1/3:12"


@dataclass(frozen=True)
class OltConfig:
    # AES-256-GCM key for OLT passwords at rest (32 bytes, hex or base64 in the file).
    key_file: str = "/etc/paymentd/secret.key"
    key: str = ""  # the key itself, for PAYMENTD_OLT_KEY; key_file is preferred
    known_hosts: str = ""  # OpenSSH known_hosts file; empty = do not check host keys
    connect_timeout_seconds: float = 15.0
    command_timeout_seconds: float = 60.0
    idle_close_seconds: float = 300.0
    # A task that failed for a transient reason (connection lost, timeout) is retried
    # this many times in all, with exponential backoff.
    max_attempts: int = 5
    retry_backoff_seconds: float = 5.0
    # Circuit breaker: after this many consecutive connection failures, stop trying the
    # device for breaker_reset_seconds.
    breaker_failures: int = 3
    breaker_reset_seconds: float = 60.0


@dataclass(frozen=True)
class SmsConfig:
    # "labsmobile" sends; "none" records the SMS as skipped.
    provider: str = "labsmobile"
    base_url: str = "https://api.labsmobile.com"
    username: str = ""
    token: str = ""
    sender: str = "paymentd"
    template: str = (
        "Hola {client_name}, hemos recibido tu pago. Tu servicio ya esta activo de nuevo."
    )
    # Prefix for local numbers without a country code (MSISDN without "+").
    default_country_code: str = ""
    # LabsMobile "test": 1 — accepted but not delivered, no credit used.
    test_mode: bool = False
    timeout_seconds: float = 15.0
    max_attempts: int = 5
    retry_backoff_seconds: float = 30.0


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    uisp: UispConfig = field(default_factory=UispConfig)
    olt: OltConfig = field(default_factory=OltConfig)
    sms: SmsConfig = field(default_factory=SmsConfig)
    source: str = "<defaults>"

    def replace(self, **sections: Any) -> Config:
        """Return a copy with some sections replaced (tests and the demo use this)."""
        return dataclasses.replace(self, **sections)


SECTIONS: dict[str, type[Any]] = {
    "daemon": DaemonConfig,
    "database": DatabaseConfig,
    "http": HttpConfig,
    "uisp": UispConfig,
    "olt": OltConfig,
    "sms": SmsConfig,
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "daemon.log_level": ("debug", "info", "warning", "error"),
    "uisp.payment_action": ("cancel_suspend", "reactivate_onu"),
    "sms.provider": ("labsmobile", "none"),
}
_URLS = ("uisp.base_url", "sms.base_url")


def _coerce(key: str, typ: type[Any], value: Any) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


# PAYMENTD_OLT_KEY_FILE is the olt.key_file setting itself, not "olt.key from a file".
_NO_FILE_OVERRIDE = {"olt.key"}


def _override(section: str, key: str, env: Mapping[str, str]) -> str | None:
    name = f"PAYMENTD_{section}_{key}".upper()
    file_var = None if f"{section}.{key}" in _NO_FILE_OVERRIDE else env.get(f"{name}_FILE")
    if file_var:
        try:
            return Path(file_var).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{section}.{key}: cannot read {name}_FILE={file_var}: {exc}"
            ) from None
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / f"{section}_{key}"
        if cred.is_file():
            return cred.read_text().strip()
    return env.get(name)


def _build_section(name: str, cls: type[Any], raw: Any, env: Mapping[str, str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        full = f"{name}.{f.name}"
        value: Any = raw.get(f.name, f.default)
        env_value = _override(name, f.name, env)
        if env_value is not None:
            value = env_value
        value = _coerce(full, hints[f.name], value)
        if full in _CHOICES and value not in _CHOICES[full]:
            raise ConfigError(f"{full}: must be one of {', '.join(_CHOICES[full])}, got {value!r}")
        if full in _URLS:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"{full}: expected an http(s) URL, got {value!r}")
            value = value.rstrip("/")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{full}: must not be negative, got {value!r}")
        values[f.name] = value
    return cls(**values)


def _check(cfg: Config) -> None:
    if not 0 <= cfg.http.port < 65536:
        raise ConfigError(f"http.port: must be 0-65535 (0 = any free port), got {cfg.http.port}")
    if cfg.database.pool_min < 1 or cfg.database.pool_max < cfg.database.pool_min:
        raise ConfigError("database.pool_max: must be >= database.pool_min >= 1")
    if not cfg.database.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("database.url: expected a postgresql:// URL")
    if cfg.database.visibility_timeout_seconds < 1:
        raise ConfigError("database.visibility_timeout_seconds: must be at least 1")
    if cfg.olt.idle_close_seconds <= 0:
        raise ConfigError("olt.idle_close_seconds: must be more than 0")
    if cfg.olt.max_attempts < 1 or cfg.sms.max_attempts < 1:
        raise ConfigError("olt.max_attempts / sms.max_attempts: must be at least 1")
    try:
        cfg.sms.template.format(client_name="x", client_id=1, service_id=1, service_name="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"sms.template: unknown placeholder {exc}; use {{client_name}}, {{client_id}}, "
            "{service_id} or {service_name}"
        ) from None


def from_mapping(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None, source: str = "<mapping>"
) -> Config:
    env = os.environ if env is None else env
    for name in data:
        if name not in SECTIONS:
            raise ConfigError(f"[{name}]: unknown section (known: {', '.join(SECTIONS)})")
    sections = {
        name: _build_section(name, cls, data.get(name), env) for name, cls in SECTIONS.items()
    }
    cfg = Config(**sections, source=source)
    _check(cfg)
    return cfg


def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load the config file (or only defaults + environment when ``path`` is None)."""
    if path is None:
        return from_mapping({}, env, "<defaults>")
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: config file not found (copy config.toml.example there, or pass --config)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    return from_mapping(data, env, str(p))


def to_toml(cfg: Config) -> str:
    """Render a config as TOML (the demo writes its generated config with this)."""
    lines: list[str] = []
    for name in SECTIONS:
        lines.append(f"[{name}]")
        section = getattr(cfg, name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, bool):
                rendered = "true" if value else "false"
            elif isinstance(value, int | float):
                rendered = repr(value)
            else:
                rendered = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{f.name} = {rendered}")
        lines.append("")
    return "\n".join(lines)
