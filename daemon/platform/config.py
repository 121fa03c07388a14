"""Configuration: a TOML file, with every key overridable from the environment.

Precedence (highest first) for a key ``section.key``:

1. ``$PAYMENTD_<SECTION>_<KEY>_FILE`` — read the value from that file (secrets);
2. ``$CREDENTIALS_DIRECTORY/<section>_<key>`` — systemd ``LoadCredential=``;
3. ``$PAYMENTD_<SECTION>_<KEY>`` — the value itself;
4. the TOML file;
5. the default below.

The sections are ``msgspec`` structs: the TOML values are checked strictly against the
annotated types and constraints (a TOML file has types, so ``port = 80.5`` or
``port = "80"`` is a mistake), environment values are strings and are converted leniently
(``"9090"`` is a port, ``"true"``/``"1"`` a boolean). Every problem is reported as one
``ConfigError`` naming the key, so the CLI can print a single line that says what to fix.

Secrets (``Secret``, ``SecretUrl``) never show their value in a repr, a str or an error;
code that needs the value calls ``.reveal()``.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec


class ConfigError(Exception):
    """A user mistake in the configuration; the message names the key."""


class Secret:
    """A setting whose value must never be shown: ``repr``/``str`` print ``Secret('***')``.

    ``bool()`` tells whether it is set (an empty secret disables what it protects);
    equality is constant-time so comparing two configs leaks nothing through timing.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The value itself: only for the place that uses it (a header, a comparison)."""
        return self._value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __str__(self) -> str:
        return "***" if self._value else ""

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Secret)
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._value))


class SecretUrl(Secret):
    """A URL that may carry a password (``database.url``): shown with the password masked,
    e.g. ``postgresql://paymentd:***@db/paymentd``, so it can still be told apart in logs."""

    __slots__ = ()

    def __str__(self) -> str:
        return mask_url(self._value)


def mask_url(url: str) -> str:
    """``url`` with its password (userinfo or ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, sep, _password = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if sep else netloc
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            masked = [(k, "***" if k.lower() in ("password", "passfile") else v) for k, v in pairs]
            query = urlencode(masked, safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "***"


def _secret(value: str = "") -> Any:
    return msgspec.field(default_factory=lambda: Secret(value))


# Constrained types: msgspec checks these on conversion and names the key on failure.
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]  # a timeout or interval: 0 would mean "never"
Count = Annotated[int, msgspec.Meta(ge=1)]
NonNeg = Annotated[int, msgspec.Meta(ge=0)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    def __post_init__(self) -> None:
        # Code (tests, the demo) may construct a section with plain strings for secrets:
        # wrap them, so a secret is masked however it got here.
        for f in msgspec.structs.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and f.type in (Secret, SecretUrl):
                msgspec.structs.force_setattr(self, f.name, f.type(value))
            elif isinstance(value, list | tuple) and f.type == tuple[Secret, ...]:
                wrapped = tuple(Secret(v) if isinstance(v, str) else v for v in value)
                msgspec.structs.force_setattr(self, f.name, wrapped)
            elif isinstance(value, list):
                msgspec.structs.force_setattr(self, f.name, tuple(value))


class DaemonConfig(_Section, frozen=True):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # How long actors get to finish in-flight work after SIGTERM before being cancelled.
    shutdown_grace_seconds: Seconds = 10.0
    migrate_on_start: bool = True
    # Supervisor: restart backoff doubles from min to max; a run this long resets it.
    restart_backoff_min_seconds: Seconds = 0.5
    restart_backoff_max_seconds: Seconds = 30.0
    restart_reset_after_seconds: Seconds = 60.0
    # More restarts than this inside restart_reset_after_seconds makes /readyz fail.
    unhealthy_restarts: NonNeg = 5


class DatabaseConfig(_Section, frozen=True):
    url: SecretUrl = msgspec.field(
        default_factory=lambda: SecretUrl("postgresql://postgres@127.0.0.1:5432/paymentd")
    )
    pool_min: Count = 2
    pool_max: Count = 10
    command_timeout_seconds: Seconds = 30.0
    # Upper bound on how long a missed NOTIFY can delay work.
    safety_poll_seconds: Seconds = 300.0
    # pgmq.enable_notify_insert throttle (leading edge only; consumers re-drain after it).
    notify_throttle_ms: NonNeg = 100
    # How long a read message stays invisible before another read may take it.
    visibility_timeout_seconds: Count = 60


class HttpConfig(_Section, frozen=True):
    host: NonEmpty = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: Count = 1024 * 1024
    # Concurrent client connections; beyond it new ones get an instant 503 and close (a few
    # more are kept for /healthz, /readyz and webhooks). Lowered to fit the fd limit.
    max_connections: Count = 1024
    # Bearer token for /api/v1/*; empty disables the admin API (it answers 503).
    admin_token: Secret = _secret()


class UispConfig(_Section, frozen=True):
    # Base URL of the CRM API, e.g. https://uisp.example.com/crm/api/v1.0
    base_url: str = "https://uisp.example.com/crm/api/v1.0"
    app_key: Secret = _secret()
    # Secret path segment of POST /webhooks/uisp/{token}; empty disables the endpoint.
    webhook_token: Secret = _secret()
    timeout_seconds: Seconds = 10.0
    # What a payment.add for a settled client with suspended services does:
    #   "cancel_suspend": PATCH cancel-suspend in UISP; its service.suspend_cancel webhook
    #                     then reactivates the ONU (UISP stays the source of truth).
    #   "reactivate_onu": reactivate the ONU directly and leave UISP as it is.
    payment_action: Literal["cancel_suspend", "reactivate_onu"] = "cancel_suspend"
    # Confirm every webhook with GET /webhook-events/{uuid} before acting on it.
    verify_webhook_events: bool = True
    # Service custom attribute keys that say where the subscriber's ONU is.
    olt_attribute: NonEmpty = "oltName"
    onu_attribute: NonEmpty = "onuPort"  # value "frame/slot/port:onu", e.g. "0/1/3:12"
    # While UISP is unreachable a webhook is retried (5 s doubling to 30 min) this long
    # after it was queued before it is marked failed (a redelivery or replay re-queues it).
    retry_for_seconds: Seconds = 3 * 24 * 3600.0


class RetentionConfig(_Section, frozen=True):
    # Stored webhooks, task history, dead letters and PGMQ archives older than this go.
    keep_days: Count = 90
    batch_size: Count = 1000  # rows per DELETE, so no statement holds locks for long
    interval_seconds: Seconds = 3600.0  # how often the retention job runs


class SecretsConfig(_Section, frozen=True):
    # The current AES-256-GCM key for secrets at rest (OLT passwords today): it encrypts
    # every new secret. 32 bytes, hex or base64 in the file ('paymentd keygen').
    key_file: str = "/etc/paymentd/secret.key"
    key: Secret = _secret()  # the key itself, for PAYMENTD_SECRETS_KEY; key_file is preferred
    # Older keys, for decryption only, while 'paymentd secrets rotate' moves every stored
    # secret to the current key. Ciphertexts name their key by id, so order does not matter.
    old_key_files: tuple[str, ...] = ()
    old_keys: tuple[Secret, ...] = ()


class OltConfig(_Section, frozen=True):
    known_hosts: str = ""  # OpenSSH known_hosts file for devices without a pinned host key
    connect_timeout_seconds: Seconds = 15.0
    command_timeout_seconds: Seconds = 60.0
    idle_close_seconds: Seconds = 300.0
    # A task that failed for a transient reason (connection lost, timeout) is retried
    # this many times in all, with exponential backoff.
    max_attempts: Count = 5
    retry_backoff_seconds: Seconds = 5.0
    # Circuit breaker: after this many consecutive connection failures, stop trying the
    # device for breaker_reset_seconds.
    breaker_failures: Count = 3
    breaker_reset_seconds: Seconds = 60.0
    # ONUs of one board switched in one CLI sequence when several tasks wait for the same
    # OLT (enter the interface once, confirm them all); 1 runs one sequence per task.
    max_batch: Count = 64


class SmsConfig(_Section, frozen=True):
    # The primary provider: "labsmobile" or "twilio" ([twilio]) send; "none" records the
    # SMS as skipped.
    provider: Literal["labsmobile", "twilio", "none"] = "labsmobile"
    # The other provider, tried once the primary has failed transiently fallback_after
    # times for a message (then the two alternate); "" for none.
    fallback: Literal["", "labsmobile", "twilio"] = ""
    fallback_after: Count = 2
    base_url: str = "https://api.labsmobile.com"
    username: str = ""
    token: Secret = _secret()
    sender: str = "paymentd"
    template: str = (
        "Hola {client_name}, hemos recibido tu pago. Tu servicio ya esta activo de nuevo."
    )
    # Prefix for local numbers without a country code (MSISDN without "+").
    default_country_code: str = ""
    # LabsMobile "test": 1 — accepted but not delivered, no credit used.
    test_mode: bool = False
    timeout_seconds: Seconds = 15.0
    max_attempts: Count = 5
    retry_backoff_seconds: Seconds = 30.0


class DriftConfig(_Section, frozen=True):
    """Drift reconciliation: UISP vs what paymentd applied vs the OLTs (network/drift.py)."""

    interval_seconds: Seconds = 6 * 3600.0  # how often the drift job runs
    fix: bool = False  # the periodic job also queues the tasks that fix what it finds
    page_size: Count = 500  # services per UISP list request
    # ONU state reads per OLT: at most this many per run (0: compare UISP and paymentd
    # only), at most this many per second, so a run never crowds out real work.
    device_reads_per_run: NonNeg = 500
    device_reads_per_second: Annotated[float, msgspec.Meta(gt=0)] = 2.0


class TwilioConfig(_Section, frozen=True):
    # Used when sms.provider or sms.fallback is "twilio".
    base_url: str = "https://api.twilio.com"
    account_sid: str = ""  # AC…
    auth_token: Secret = _secret()
    # The sender: an E.164 number or alphanumeric sender ID, or a Messaging Service (MG…).
    from_number: str = ""
    messaging_service_sid: str = ""
    timeout_seconds: Seconds = 15.0
    # Twilio's message list can lag behind a send: an interrupted attempt is only taken as
    # not sent once it is this old and still not listed.
    lookup_settle_seconds: Seconds = 60.0


class WebhooksConfig(_Section, frozen=True):
    """Outbound webhooks (daemon/webhooks, the webhook dispatcher actor)."""

    # Delay before each attempt, the first included: 8 attempts over about 28 hours.
    retry_schedule_seconds: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    jitter: Annotated[float, msgspec.Meta(ge=0, le=0.5)] = 0.2  # each delay ±20 %
    timeout_seconds: Seconds = 15.0  # one whole exchange: connect, send, answer, body
    response_body_max_bytes: Annotated[int, msgspec.Meta(ge=0, le=64 * 1024)] = 64 * 1024
    slow_down_seconds: Seconds = 60.0  # the least wait after a 429 or a timeout
    retry_after_max_seconds: Seconds = 6 * 3600.0  # Retry-After is honoured up to this
    disable_after_seconds: Seconds = 5 * 24 * 3600.0  # only failures this long: disabled
    secret_overlap_seconds: Seconds = 24 * 3600.0  # old secret signs this long after rotation
    # Exchanges at once, all endpoints together; failing endpoints (last attempt failed)
    # get one each and at most half of it together, so answering endpoints keep the rest.
    max_in_flight: Count = 64
    endpoint_concurrency: Count = 4  # per endpoint, unless the endpoint sets its own
    # A claimed delivery is held this long; must exceed timeout_seconds, so a slow exchange
    # is never sent twice at once (Svix PR #2181), while a crash costs at most this.
    lease_seconds: Seconds = 60.0
    safety_poll_seconds: Seconds = 300.0  # re-read the timer at least this often
    allow_private_targets: bool = False  # loopback, private, link-local, CGNAT, ... allowed
    allowed_cidrs: tuple[str, ...] = ()  # or only these non-global networks
    user_agent: NonEmpty = "paymentd-webhooks/1"


class PaymentsConfig(_Section, frozen=True):
    # "mock": the built-in mock provider (demo, tests); "stripe"; "none": the payments API
    # answers 503 for anything that needs a provider.
    provider: Literal["mock", "stripe", "none"] = "none"
    # A payment still waiting for the customer this long after creation is cancelled at
    # the provider and marked expired (Stripe Checkout Sessions live at most 24 h).
    pending_ttl_seconds: Seconds = 24 * 3600.0
    # Payments pending/processing/unknown untouched this long are re-fetched from the
    # provider; further re-fetches back off (doubling) up to reconcile_backoff_max_seconds.
    reconcile_after_seconds: Seconds = 300.0
    reconcile_backoff_max_seconds: Seconds = 3600.0
    reconcile_interval_seconds: Seconds = 60.0  # how often the reconcile job runs
    expire_interval_seconds: Seconds = 300.0  # how often the expire job runs
    batch_size: Count = 100  # payments per reconcile/expire run
    # Idempotency-Key: kept this long; a request still "running" after lock_seconds is
    # taken to have died and a repeat may take its key over.
    idempotency_ttl_seconds: Seconds = 24 * 3600.0
    idempotency_lock_seconds: Seconds = 60.0
    provider_timeout_seconds: Seconds = 20.0  # one provider call, then "unknown"
    # Where the mock's hosted page lives and hosted pages send the customer back to.
    public_base_url: str = "http://127.0.0.1:8080"
    success_url: str = ""  # empty: {public_base_url}/pay/done
    cancel_url: str = ""  # empty: {public_base_url}/pay/canceled
    # How long a checkout link the SDK asks for (POST /checkout-links) works; the API's
    # checkout_url works as long as its payment can be paid (expires_at).
    checkout_link_ttl_seconds: Seconds = 3600.0
    # What a succeeded payment with uisp_client_id does to the network (uisp_loop.py):
    #   "record"     record it in UISP (POST /payments), so UISP's own unsuspend and
    #                webhook reconnect the customer as for office payments;
    #   "reconnect"  queue the reconnection of the client's suspended services directly
    #                (the planning a UISP payment webhook uses); UISP is not told;
    #   "off"        nothing; "" (default): "record" if uisp_record_payments, else "off".
    uisp_mode: Literal["", "off", "record", "reconnect"] = ""
    uisp_record_payments: bool = False  # the older switch: uisp_mode = "record"
    uisp_payment_method_id: str = ""  # UISP payment method (uuid) for card payments
    # Stripe (the stripe provider and POST /webhooks/stripe).
    stripe_api_key: Secret = _secret()
    stripe_base_url: str = "https://api.stripe.com"  # localstripe in tests
    # whsec_… signing secrets: keep them in the keyring ('paymentd payments stripe-secret
    # add', at most two active); these are still accepted as well (older configs).
    stripe_webhook_secrets: tuple[Secret, ...] = ()
    stripe_webhook_tolerance_seconds: Seconds = 300.0
    # How long the daemon trusts its copy of the keyring's signing secrets: an added or
    # retired secret takes effect within this (an added one at its first event).
    stripe_webhook_secrets_refresh_seconds: Seconds = 10.0

    @property
    def uisp_action(self) -> Literal["off", "record", "reconnect"]:
        """``uisp_mode`` with the older ``uisp_record_payments`` folded in."""
        if self.uisp_mode:
            return self.uisp_mode
        return "record" if self.uisp_record_payments else "off"


class GrpcConfig(_Section, frozen=True):
    # The payments API over gRPC (daemon/actors/grpc_ingress.py), on its own port; the
    # same API keys and scopes as HTTP. Cleartext HTTP/2: keep it inside the VPN or put a
    # TLS proxy in front, as for [http].
    enabled: bool = False
    host: NonEmpty = "127.0.0.1"
    port: Port = 50051  # 0 = any free port (tests)


class ConsoleConfig(_Section, frozen=True):
    # The operator console at /console (daemon/console/): how long a sign-in lasts, and
    # whether the daemon is behind a TLS proxy (its session cookie is then Secure even
    # though the proxy speaks plain HTTP to us; a request that came over TLS always is).
    session_lifetime_seconds: Seconds = 12 * 3600.0
    behind_tls: bool = False


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    uisp: UispConfig = msgspec.field(default_factory=UispConfig)
    secrets: SecretsConfig = msgspec.field(default_factory=SecretsConfig)
    olt: OltConfig = msgspec.field(default_factory=OltConfig)
    sms: SmsConfig = msgspec.field(default_factory=SmsConfig)
    twilio: TwilioConfig = msgspec.field(default_factory=TwilioConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    drift: DriftConfig = msgspec.field(default_factory=DriftConfig)
    webhooks: WebhooksConfig = msgspec.field(default_factory=WebhooksConfig)
    payments: PaymentsConfig = msgspec.field(default_factory=PaymentsConfig)
    grpc: GrpcConfig = msgspec.field(default_factory=GrpcConfig)
    console: ConsoleConfig = msgspec.field(default_factory=ConsoleConfig)
    source: str = "<defaults>"
    # Things the operator should change but that still work (deprecated keys); the CLI
    # prints them and the daemon logs them at start-up.
    notices: tuple[str, ...] = ()

    def replace(self, **sections: Any) -> Config:
        """Return a copy with some sections replaced (tests and the demo use this)."""
        return msgspec.structs.replace(self, **sections)


SECTIONS: dict[str, type[_Section]] = {
    "daemon": DaemonConfig,
    "database": DatabaseConfig,
    "http": HttpConfig,
    "uisp": UispConfig,
    "secrets": SecretsConfig,
    "olt": OltConfig,
    "sms": SmsConfig,
    "twilio": TwilioConfig,
    "retention": RetentionConfig,
    "drift": DriftConfig,
    "webhooks": WebhooksConfig,
    "payments": PaymentsConfig,
    "grpc": GrpcConfig,
    "console": ConsoleConfig,
}

_URLS = (
    "uisp.base_url",
    "sms.base_url",
    "twilio.base_url",
    "payments.public_base_url",
    "payments.stripe_base_url",
)
# Settings that are files holding a key: PAYMENTD_SECRETS_KEY_FILE is the secrets.key_file
# setting itself, not "secrets.key read from a file" (the same for the deprecated olt.*).
_NO_FILE_OVERRIDE = {"secrets.key", "olt.key"}
# [olt] key_file / key before the keyring existed: still read, with a notice.
_DEPRECATED = {"olt.key_file": "secrets.key_file", "olt.key": "secrets.key"}
_HINTS = {"http.port": "must be 0-65535 (0 = any free port)"}


def _dec_hook(typ: type, obj: Any) -> Any:
    if typ in (Secret, SecretUrl):
        if isinstance(obj, Secret):
            return typ(obj.reveal())
        if isinstance(obj, str):
            return typ(obj)
        # Never the value: it may be the secret in the wrong shape.
        raise TypeError(f"expected a string, got {_type_name(obj)}")
    raise NotImplementedError(typ)


def _type_name(obj: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(obj), type(obj).__name__)


def _is_secret_type(typ: Any) -> bool:
    return typ in (Secret, SecretUrl) or typ == tuple[Secret, ...]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _base(typ: Any) -> Any:
    """``Annotated[int, Meta(...)]`` -> ``int``."""
    return typing.get_args(typ)[0] if typing.get_origin(typ) is Annotated else typ


class _Sources:
    """Where each overridden value came from, for error messages (never the value)."""

    def __init__(self) -> None:
        self.origin: dict[str, str] = {}

    def suffix(self, key: str) -> str:
        return f" (from {self.origin[key]})" if key in self.origin else ""


def _override(
    section: str, key: str, env: Mapping[str, str], sources: _Sources
) -> tuple[str, str] | None:
    """The environment's value for ``section.key`` and where it came from, if any."""
    full = f"{section}.{key}"
    name = f"PAYMENTD_{section}_{key}".upper()
    file_var = None if full in _NO_FILE_OVERRIDE else env.get(f"{name}_FILE")
    if file_var:
        try:
            return Path(file_var).read_text().strip(), f"{name}_FILE"
        except OSError as exc:
            raise ConfigError(
                f"{full}: cannot read {name}_FILE={file_var}: {exc.strerror or exc}"
            ) from None
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / f"{section}_{key}"
        if cred.is_file():
            return cred.read_text().strip(), f"credential {section}_{key}"
    if name in env:
        return env[name], name
    return None


def _from_env(full: str, typ: Any, text: str, origin: str) -> Any:
    """Convert an environment string to the setting's type (constraints checked later)."""
    base = _base(typ)
    if typing.get_origin(base) is tuple:
        # A list from one string: comma- or newline-separated (a credential file may hold
        # one entry per line).
        return [p.strip() for p in re.split(r"[,\n]", text) if p.strip()]
    if base in (Secret, SecretUrl, str) or typing.get_origin(base) is Literal:
        return text
    try:
        return msgspec.convert(text.strip(), base, strict=False)
    except msgspec.ValidationError:
        raise ConfigError(
            f"{full}: expected {_expected(base)}, got {text!r} (from {origin})"
        ) from None


def _expected(typ: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(typ, getattr(typ, "__name__", str(typ)))


def _find_non_finite(data: Mapping[str, Any], prefix: str = "") -> str | None:
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, float) and not math.isfinite(v):
            return key
        if isinstance(v, Mapping):
            found = _find_non_finite(v, f"{key}.")
            if found:
                return found
        if isinstance(v, list | tuple) and any(
            isinstance(x, float) and not math.isfinite(x) for x in v
        ):
            return key
    return None


_PATH = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$")
_EXPECTED_TYPE = re.compile(r"^Expected `(?P<type>[\w |]+)`, got `\w+`$")
_CONSTRAINT = re.compile(r"^Expected `\w+`(?: of length)? (?P<op>>=|>|<=|<) (?P<num>[\d.e+-]+)$")
_OPS = {">=": "at least", ">": "more than", "<=": "at most", "<": "less than"}
_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
_TYPES |= {"object": "a table", "array": "an array"}


def _translate(exc: msgspec.ValidationError, data: Mapping[str, Any], sources: _Sources) -> str:
    """msgspec's message, rewritten as ``key: what is wrong, got VALUE`` (never a secret)."""
    text = str(exc)
    m = _PATH.match(text)
    msg, path = (m["msg"], m["path"].lstrip(".")) if m else (text, "")
    unknown = re.match(r"^Object contains unknown field `(?P<field>[^`]*)`$", msg)
    if unknown:
        if not path:
            return f"[{unknown['field']}]: unknown section (known: {', '.join(SECTIONS)})"
        known = ", ".join(sorted(f.name for f in msgspec.structs.fields(SECTIONS[path])))
        return f"{path}.{unknown['field']}: unknown key (known: {known})"
    if "." not in path:  # a section that is not a table
        return f"[{path}]: must be a table (got {_type_name(data.get(path))})"
    section, key = path.split(".", 1)
    field = key.split("[", 1)[0]
    typ = _hints(SECTIONS[section]).get(field)
    raw: Any = data.get(section, {}).get(field)
    secret = _is_secret_type(_base(typ))
    got = "" if secret else f", got {raw!r}"
    where = sources.suffix(f"{section}.{field}")
    if (t := _EXPECTED_TYPE.match(msg)) is not None:
        expected = " or ".join(_TYPES.get(x.strip(), x.strip()) for x in t["type"].split("|"))
        return f"{path}: expected {expected}{got}{where}"
    if (c := _CONSTRAINT.match(msg)) is not None:
        num = c["num"].removesuffix(".0")
        if "of length" in msg:
            return f"{path}: must not be empty{where}"
        if path in _HINTS:
            return f"{path}: {_HINTS[path]}{got}{where}"
        return f"{path}: must be {_OPS[c['op']]} {num}{got}{where}"
    if msg.startswith("Invalid enum value"):
        choices = ", ".join(c or '""' for c in typing.get_args(_base(typ)))
        return f"{path}: must be one of {choices}{got}{where}"
    return f"{path}: {msg}{where}"


def _merge(
    data: Mapping[str, Any], env: Mapping[str, str], sources: _Sources
) -> tuple[dict[str, Any], list[str]]:
    """TOML tables with the environment's overrides applied; plus notices to show."""
    merged: dict[str, Any] = {}
    for name, table in data.items():
        merged[name] = dict(table) if isinstance(table, Mapping) else table
    notices: list[str] = []
    olt = merged.get("olt")
    legacy: dict[str, Any] = {}
    if isinstance(olt, dict):
        for old in ("key_file", "key"):
            if old in olt:
                legacy[f"olt.{old}"] = olt.pop(old)
    for old in _DEPRECATED:
        section, key = old.split(".")
        found = _override(section, key, env, sources)
        if found is not None:
            legacy[old] = found[0]
            sources.origin[old] = found[1]
    for name, cls in SECTIONS.items():
        table = merged.get(name)
        if table is not None and not isinstance(table, dict):
            continue  # reported by the conversion, naming the section
        for key, typ in _hints(cls).items():
            found = _override(name, key, env, sources)
            if found is None:
                continue
            text, origin = found
            full = f"{name}.{key}"
            sources.origin[full] = origin
            merged.setdefault(name, {})[key] = _from_env(full, typ, text, origin)
    if legacy:
        secrets = merged.setdefault("secrets", {})
        if not isinstance(secrets, dict):
            return merged, notices
        for old, value in legacy.items():
            new = _DEPRECATED[old]
            new_key = new.split(".")[1]
            how = sources.origin.get(old, f"[olt] {old.split('.')[1]}")
            # Configs copied from the old example list [olt] key_file / key with their
            # defaults: those say nothing, so they cannot contradict the [secrets] ones.
            default = getattr(SecretsConfig(), new_key)
            default_text = default.reveal() if isinstance(default, Secret) else default
            says_nothing = value in ("", default_text)
            if new_key in secrets and secrets[new_key] != value and not says_nothing:
                raise ConfigError(
                    f"{old}{sources.suffix(old)}: deprecated, and {new}"
                    f"{sources.suffix(new)} is set to something else; keep only {new}"
                )
            if new_key not in secrets:
                secrets[new_key] = value
            if old in sources.origin:
                sources.origin[new] = sources.origin[old]
            notices.append(
                f"{old} is deprecated: it is read as {new} (the keyring's current key); "
                f"move it there ({how} -> {_spelling(new, how)})"
            )
    return merged, notices


def _spelling(new: str, old_origin: str) -> str:
    """How the operator writes ``new`` the same way they wrote the old key."""
    section, key = new.split(".")
    if old_origin.startswith("PAYMENTD_"):
        return f"PAYMENTD_{section}_{key}".upper()
    if old_origin.startswith("credential"):
        return f"credential {section}_{key}"
    return f"[{section}] {key}"


def _check_webhooks(w: WebhooksConfig) -> None:
    if not w.retry_schedule_seconds or any(
        not math.isfinite(x) or x < 0 for x in w.retry_schedule_seconds
    ):
        raise ConfigError(
            "webhooks.retry_schedule_seconds: give one or more delays in seconds, each >= 0"
        )
    if w.lease_seconds <= w.timeout_seconds + 5:
        raise ConfigError(
            "webhooks.lease_seconds: must exceed webhooks.timeout_seconds by more than 5 s"
        )
    for cidr in w.allowed_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(
                f"webhooks.allowed_cidrs: {cidr!r} is not a network like 10.0.0.0/8"
            ) from None


def _check(cfg: Config) -> Config:
    """Rules across keys, and shapes msgspec's constraints do not express."""
    db = cfg.database
    if db.pool_max < db.pool_min:
        raise ConfigError("database.pool_max: must be >= database.pool_min")
    url = db.url.reveal()
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"database.url: expected a postgresql:// URL, got {str(db.url)!r}")
    try:
        # Each host of a multi-host URL may carry a port; asyncpg would fail on a bad one
        # deep in a connect, with a traceback.
        for host in urlsplit(url).netloc.rpartition("@")[2].split(","):
            port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host else ""
            if port and not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(port)
    except ValueError:
        raise ConfigError(
            f"database.url: the port must be a number from 1 to 65535, got {str(db.url)!r}"
        ) from None
    d = cfg.daemon
    if d.restart_backoff_max_seconds < d.restart_backoff_min_seconds:
        raise ConfigError(
            "daemon.restart_backoff_max_seconds: must be >= daemon.restart_backoff_min_seconds"
        )
    _check_webhooks(cfg.webhooks)
    if cfg.payments.uisp_record_payments and cfg.payments.uisp_mode not in ("", "record"):
        raise ConfigError(
            f"payments.uisp_record_payments: contradicts payments.uisp_mode ="
            f" {cfg.payments.uisp_mode!r}; drop uisp_record_payments (uisp_mode replaces it)"
        )
    try:
        cfg.sms.template.format(client_name="x", client_id=1, service_id=1, service_name="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"sms.template: unknown placeholder {exc}; use {{client_name}}, {{client_id}}, "
            "{service_id} or {service_name}"
        ) from None
    _check_sms(cfg.sms)
    sections: dict[str, Any] = {}
    for full in _URLS:
        name, key = full.split(".")
        value = getattr(getattr(cfg, name), key)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{full}: expected an http(s) URL, got {value!r}")
        if value.endswith("/"):
            sections[name] = msgspec.structs.replace(
                sections.get(name, getattr(cfg, name)), **{key: value.rstrip("/")}
            )
    return cfg.replace(**sections) if sections else cfg


def _check_sms(sms: SmsConfig) -> None:
    if not sms.fallback:
        return
    if sms.provider == "none":
        raise ConfigError('sms.fallback: needs a primary provider (sms.provider is "none")')
    if sms.fallback == sms.provider:
        raise ConfigError(f"sms.fallback: must differ from sms.provider (both {sms.provider!r})")
    if sms.fallback_after >= sms.max_attempts:
        raise ConfigError(
            f"sms.fallback_after: must be less than sms.max_attempts ({sms.max_attempts}),"
            " or the fallback is never tried"
        )


def from_mapping(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None, source: str = "<mapping>"
) -> Config:
    env = os.environ if env is None else env
    sources = _Sources()
    merged, notices = _merge(data, env, sources)
    bad = _find_non_finite(merged)
    if bad:
        raise ConfigError(f"{bad}: must be a finite number (not nan or inf){sources.suffix(bad)}")
    try:
        cfg = msgspec.convert(merged, Config, strict=True, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(_translate(exc, merged, sources)) from None
    return _check(cfg.replace(source=source, notices=tuple(notices)))


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


def _toml_value(value: Any) -> str:
    if isinstance(value, Secret):
        value = value.reveal()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(cfg: Config) -> str:
    """Render a config as TOML (the demo writes its generated config with this).

    Secrets are written as they are: the output is a config file, to be kept as one.
    """
    lines: list[str] = []
    for name in SECTIONS:
        lines.append(f"[{name}]")
        section = getattr(cfg, name)
        for f in msgspec.structs.fields(section):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
        lines.append("")
    return "\n".join(lines)
