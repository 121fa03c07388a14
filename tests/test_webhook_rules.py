"""The dispatcher's pure rules: the retry schedule, Retry-After, what the SSRF guard
refuses, the signature format — and the guard's transport over a real socket."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio
import trustme
from standardwebhooks import Webhook

from daemon.fakes.webhook_receiver import WebhookReceiver
from daemon.platform.config import ConfigError, WebhooksConfig, from_mapping
from daemon.webhooks import endpoints, signing
from daemon.webhooks.schedule import RetryPolicy, parse_retry_after
from daemon.webhooks.ssrf import GuardedTransport, TargetPolicy, TargetRefused

POLICY = RetryPolicy.from_config(WebhooksConfig())


def test_the_default_schedule_is_eight_attempts_with_twenty_percent_jitter() -> None:
    assert POLICY.schedule == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    kw = {"status_code": 500, "timed_out": False, "retry_after": None}
    assert POLICY.delay_after(1, rand=lambda: 0.5, **kw) == 5  # type: ignore[arg-type]
    assert POLICY.delay_after(1, rand=lambda: 0.0, **kw) == pytest.approx(4.0)  # type: ignore[arg-type]
    assert POLICY.delay_after(1, rand=lambda: 1.0, **kw) == pytest.approx(6.0)  # type: ignore[arg-type]
    assert POLICY.delay_after(7, rand=lambda: 0.5, **kw) == 36000  # type: ignore[arg-type]
    assert POLICY.delay_after(8, rand=lambda: 0.5, **kw) is None  # type: ignore[arg-type]


def test_429_and_timeouts_wait_at_least_a_minute_and_retry_after_is_honoured_within_bounds() -> (
    None
):
    half = lambda: 0.5  # noqa: E731
    assert (
        POLICY.delay_after(1, status_code=429, timed_out=False, retry_after=None, rand=half) == 60
    )
    assert (
        POLICY.delay_after(1, status_code=None, timed_out=True, retry_after=None, rand=half) == 60
    )
    assert (
        POLICY.delay_after(1, status_code=503, timed_out=False, retry_after=120, rand=half) == 120
    )
    # A shorter Retry-After never makes it sooner than the schedule; a huge one is capped.
    assert POLICY.delay_after(2, status_code=503, timed_out=False, retry_after=1, rand=half) == 300
    capped = POLICY.delay_after(1, status_code=503, timed_out=False, retry_after=10**9, rand=half)
    assert capped == 6 * 3600
    now = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Wed, 02 Dec 2026 12:01:30 GMT", now) == 90
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "0.0.0.0",
        "224.0.0.1",
        "192.0.2.1",  # documentation
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "fec0::1",  # site-local (deprecated, still routed inside some networks)
    ],
)
def test_non_global_addresses_are_refused_unless_allowed(address: str) -> None:
    assert TargetPolicy().refusal(address) is not None
    assert TargetPolicy(allow_private=True).refusal(address) is None


def test_public_addresses_pass_and_an_allowlist_opens_only_its_networks() -> None:
    assert TargetPolicy().refusal("93.184.216.34") is None
    assert TargetPolicy().refusal("2606:4700::1111") is None
    assert TargetPolicy().refusal("2002:5db8:d822::1") is None  # 6to4 of 93.184.216.34
    only_10 = TargetPolicy.from_config(False, ["10.20.0.0/16"])
    assert only_10.refusal("10.20.3.4") is None
    assert only_10.refusal("10.21.0.1") is not None
    assert only_10.refusal("127.0.0.1") is not None


def test_config_refuses_a_lease_shorter_than_an_exchange_and_a_bad_cidr() -> None:
    for webhooks, key in (
        ({"timeout_seconds": 30, "lease_seconds": 20}, "lease_seconds"),
        ({"allowed_cidrs": ["10.0.0.0/33"]}, "allowed_cidrs"),
        ({"retry_schedule_seconds": []}, "retry_schedule_seconds"),
    ):
        with pytest.raises(ConfigError, match=f"webhooks.{key}"):
            from_mapping({"webhooks": webhooks}, {}, "test")
    assert from_mapping({}, {}, "test").webhooks == WebhooksConfig()


def test_signatures_are_the_ones_the_standardwebhooks_package_computes() -> None:
    secret = endpoints.generate_secret()
    other = endpoints.generate_secret()
    body = b'{"id":"evt_1","type":"sms.sent"}'
    when = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
    ts = int(when.timestamp())
    ours = signing.signature([secret, other], "evt_1", ts, body).split()
    assert ours[0] == Webhook(secret).sign("evt_1", when, body.decode())
    assert ours[1] == Webhook(other).sign("evt_1", when, body.decode())
    with pytest.raises(ValueError, match="no active"):
        signing.headers([], "evt_1", ts, body)


@pytest.fixture
async def rx() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver()
    async with trio.open_nursery() as n:
        await n.start(r.serve)
        yield r
        n.cancel_scope.cancel()


async def test_the_guard_connects_to_the_address_it_checked_with_the_host_name_kept(
    rx: WebhookReceiver,
) -> None:
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return {"partner.test": ["127.0.0.1"], "mixed.test": ["127.0.0.1", "10.0.0.1"]}[host]

    transport = GuardedTransport(TargetPolicy.from_config(False, ["127.0.0.0/8"]), resolve=resolve)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        with trio.fail_after(10):
            # Not a name the system resolver knows: reaching the receiver proves the
            # connection went to the address our lookup returned and checked.
            r = await client.post(f"http://partner.test:{rx.port}/hook", content=b"{}")
            assert r.status_code == 200
            assert rx.received[0].headers["host"] == f"partner.test:{rx.port}"
            # One bad address among good ones refuses the name outright.
            with pytest.raises(TargetRefused, match=r"10\.0\.0\.1"):
                await client.post(f"http://mixed.test:{rx.port}/hook", content=b"{}")
            with pytest.raises(TargetRefused, match="not a public address"):
                await client.post(f"http://[::ffff:10.0.0.1]:{rx.port}/hook", content=b"{}")
    assert lookups == ["partner.test", "mixed.test"]
    assert len(rx.received) == 1


async def test_tls_to_the_checked_address_still_verifies_the_url_host_and_sends_it_as_sni(
    nursery: trio.Nursery,
) -> None:
    # The guard connects to an IP; TLS must still be about the name in the URL.
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("partner.test").configure_cert(server_ctx)
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni.append(name)  # type: ignore[assignment,misc,return-value]

    async def serve(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, server_ctx, server_side=True)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await tls.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            await tls.send_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            await tls.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client refused our certificate

    [listener] = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    port = listener.socket.getsockname()[1]

    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]  # both names point at the server holding partner.test's cert

    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    transport = GuardedTransport(
        TargetPolicy.from_config(False, ["127.0.0.0/8"]), resolve=resolve, ssl_context=client_ctx
    )
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        with trio.fail_after(10):
            r = await client.post(f"https://partner.test:{port}/hook", content=b"{}")
            assert r.status_code == 204
            assert sni == ["partner.test"]
            with pytest.raises(httpx.ConnectError, match="certificate"):
                await client.post(f"https://other.test:{port}/hook", content=b"{}")
    assert sni == ["partner.test", "other.test"]
