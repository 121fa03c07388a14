"""Endpoint URLs and event-type filters: what is accepted, and what each refusal says."""

from __future__ import annotations

import pytest

from daemon.webhooks.rules import EndpointError, check_filters, check_url, matches


@pytest.mark.parametrize(
    "url",
    [
        "https://partner.example/hooks",
        "http://127.0.0.1:8080/in?x=1",
        "https://[2001:db8::1]:8443/",
    ],
)
def test_http_and_https_urls_are_accepted(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://partner.example/", "https://"),
        ("partner.example/hooks", "https://"),
        ("https://user:hunter2@partner.example/", "credentials"),
        ("https://token@partner.example/", "credentials"),
        ("https:///path", "no host"),
        ("https://partner.example:99999/", "not a valid URL"),
        ("https://partner.example/a b", "spaces"),
        ("https://partner.example/#frag", "fragment"),
        ("https://partner.example/" + "a" * 2000, "longer than"),
    ],
)
def test_bad_urls_are_refused_saying_why_without_echoing_them(url: str, says: str) -> None:
    with pytest.raises(EndpointError) as refused:
        check_url(url)
    assert says in str(refused.value)
    assert refused.value.field == "url"
    assert "hunter2" not in str(refused.value)


def test_filters_are_declared_types_or_wildcards_of_declared_prefixes() -> None:
    assert check_filters(["payment.*", "reconnection.succeeded", "payment.*"]) == [
        "payment.*",
        "reconnection.succeeded",
    ]
    assert check_filters(["*"]) == ["*"]
    for bad, says in [
        ([], "at least one"),
        (["payment.exploded"], "unknown event type"),
        (["invoice.*"], "no event type starts with 'invoice'"),
        (["pay*"], "unknown event type"),
        (["webhook.test"], "only sent on request"),
    ]:
        with pytest.raises(EndpointError, match=says):
            check_filters(bad)


def test_matching() -> None:
    assert matches(["payment.*"], "payment.succeeded")
    assert not matches(["payment.*"], "refund.succeeded")
    assert matches(["sms.sent"], "sms.sent") and not matches(["sms.sent"], "sms.failed")
    assert matches(["*"], "endpoint.disabled")
    assert not matches(["*"], "webhook.test")
