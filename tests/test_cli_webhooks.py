"""``paymentd webhooks …`` on a real database: what each command prints, and mistakes as
one line with exit 2."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import psycopg
import pytest

from daemon.cli import main
from daemon.platform.secrets import keygen

Capture = pytest.CaptureFixture[str]


@pytest.fixture
def config(db_url: str, tmp_path: Path) -> str:
    key = tmp_path / "secret.key"
    keygen(key)
    path = tmp_path / "config.toml"
    path.write_text(f'[database]\nurl = "{db_url}"\n[secrets]\nkey_file = "{key}"\n')
    return str(path)


def wh(config: str, capsys: Capture, *argv: str) -> tuple[int, str, str]:
    """``paymentd webhooks ARGV… --config CONFIG``."""
    code = main(["webhooks", *argv, "--config", config])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(result: tuple[int, str, str], *expected: str) -> None:
    code, _out, err = result
    assert code == 2, result
    assert err.startswith("paymentd: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err


def add(config: str, capsys: Capture, *argv: str) -> tuple[str, str]:
    """Register an endpoint; (its id, its secret)."""
    code, out, err = wh(config, capsys, "endpoints", "add", "https://partner.example/in", *argv)
    assert code == 0, err
    secret = out.strip()
    endpoint_id = err.split()[2]
    return endpoint_id, secret


def failed_delivery(db_url: str, endpoint_id: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        event_id = "evt_" + secrets.token_hex(16)
        conn.execute(
            "INSERT INTO events (id, type, data) VALUES (%s, 'sms.failed', '{}')", (event_id,)
        )
        row = conn.execute(
            "INSERT INTO webhook_deliveries (event_id, endpoint_id, state, attempts,"
            " next_attempt_at, last_status_code, last_error, finished_at)"
            " VALUES (%s, %s, 'failed', 8, NULL, 503, 'HTTP 503', now()) RETURNING id",
            (event_id, endpoint_id),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, url,"
            " address, status_code) VALUES (%s, 1, now(), 40, 'https://partner.example/in',"
            " '203.0.113.9', 503)",
            (row[0],),
        )
        return int(row[0])


def test_endpoints_are_added_listed_shown_changed_rotated_and_removed(
    config: str, capsys: Capture
) -> None:
    code, out, err = wh(
        config, capsys, "endpoints", "add", "https://partner.example/in",
        "--event-type", "payment.*", "--event-type", "sms.sent", "--max-concurrency", "3",
    )  # fmt: skip
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("whsec_") and len(out.splitlines()) == 1
    assert "cannot be shown again" in err and secret not in err
    endpoint_id = err.split()[2]
    assert endpoint_id.startswith("ep_")

    code, out, _ = wh(config, capsys, "endpoints", "list")
    assert code == 0 and endpoint_id in out and "payment.*,sms.sent" in out
    assert secret.removeprefix("whsec_") not in out
    code, out, _ = wh(config, capsys, "endpoints", "list", "--json")
    [listed] = json.loads(out)
    assert (listed["id"], listed["max_concurrency"]) == (endpoint_id, 3)
    code, out, _ = wh(config, capsys, "endpoints", "list", "--disabled")
    assert out.startswith("no webhook endpoints")

    code, out, _ = wh(config, capsys, "endpoints", "update", endpoint_id, "--disable",
                      "--event-type", "reconnection.*", "--rate-limit", "10")  # fmt: skip
    assert code == 0 and "disabled (operator)" in out and "reconnection.*" in out
    code, out, _ = wh(config, capsys, "endpoints", "update", endpoint_id, "--enable",
                      "--rate-limit", "none", "--legacy-signature")  # fmt: skip
    assert code == 0 and "enabled" in out
    code, out, _ = wh(config, capsys, "endpoints", "show", endpoint_id, "--json")
    shown = json.loads(out)
    assert shown["endpoint"]["rate_limit_per_second"] is None
    assert shown["endpoint"]["legacy_signature"] is True
    assert len(shown["secrets"]) == 1 and "secret_enc" not in out

    code, out, err = wh(
        config, capsys, "endpoints", "rotate-secret", endpoint_id, "--overlap", "60"
    )
    assert code == 0, err
    new = out.strip()
    assert new.startswith("whsec_") and new != secret and "60 s" in err
    code, out, _ = wh(config, capsys, "endpoints", "show", endpoint_id)
    assert "signs until" in out and out.count("secret ") == 2
    assert new.removeprefix("whsec_") not in out and secret.removeprefix("whsec_") not in out

    code, out, _ = wh(config, capsys, "endpoints", "test", endpoint_id)
    assert code == 0 and out.startswith("test event evt_") and "queued as delivery" in out

    code, out, _ = wh(config, capsys, "endpoints", "remove", endpoint_id)
    assert (code, out.strip()) == (0, f"removed {endpoint_id}")
    one_line_error(wh(config, capsys, "endpoints", "show", endpoint_id), "no webhook endpoint")


def test_a_secret_is_read_from_a_file_never_from_the_command_line(
    config: str, capsys: Capture, tmp_path: Path
) -> None:
    given = "whsec_" + "B" * 43 + "="
    (tmp_path / "s").write_text(given + "\n")
    _endpoint_id, secret = add(config, capsys, "--secret-file", str(tmp_path / "s"))
    assert secret == given
    one_line_error(
        wh(config, capsys, "endpoints", "add", "https://p.example/", "--secret-file", "/nope"),
        "--secret-file /nope",
    )
    (tmp_path / "short").write_text("whsec_c2hvcnQ=")
    result = wh(config, capsys, "endpoints", "add", "https://p.example/",
                "--secret-file", str(tmp_path / "short"))  # fmt: skip
    one_line_error(result, "secret:")
    assert "c2hvcnQ" not in result[2]


def test_mistakes_are_one_line_saying_what_to_fix(config: str, capsys: Capture) -> None:
    with_password = wh(config, capsys, "endpoints", "add", "https://ops:hunter2@partner.example/")
    one_line_error(with_password, "credentials")
    assert "hunter2" not in with_password[2]
    one_line_error(
        wh(config, capsys, "endpoints", "add", "https://p.example/", "--event-type", "invoice.*"),
        "event_types:",
    )
    one_line_error(wh(config, capsys, "endpoints", "show", "ep_nope"), "no webhook endpoint")
    one_line_error(wh(config, capsys, "endpoints", "update", "ep_" + "0" * 24, "--enable"),
                   "no webhook endpoint")  # fmt: skip
    endpoint_id, _ = add(config, capsys)
    one_line_error(wh(config, capsys, "endpoints", "update", endpoint_id), "nothing to change")
    for overlap in ("-5", "nan", "inf", "1e300", "2592001"):
        one_line_error(
            wh(config, capsys, "endpoints", "rotate-secret", endpoint_id, "--overlap", overlap),
            "--overlap",
        )
    one_line_error(wh(config, capsys, "recover", endpoint_id, "--since", "last week"), "--since")
    one_line_error(wh(config, capsys, "recover", endpoint_id, "--since", "2026-01-01T00:00"),
                   "time zone")  # fmt: skip
    one_line_error(wh(config, capsys, "deliveries", "show", "abc"), "no webhook delivery")
    one_line_error(wh(config, capsys, "deliveries", "retry", "77"), "no webhook delivery 77")
    with pytest.raises(SystemExit) as usage:
        main(["webhooks", "deliveries", "list", "--limit", "0"])
    assert usage.value.code == 2


def test_deliveries_are_listed_shown_retried_and_recovered(
    config: str, capsys: Capture, db_url: str
) -> None:
    endpoint_id, _ = add(config, capsys)
    first, second = failed_delivery(db_url, endpoint_id), failed_delivery(db_url, endpoint_id)

    code, out, _ = wh(config, capsys, "deliveries", "list", "--endpoint", endpoint_id)
    lines = out.splitlines()
    assert code == 0 and [int(line.split()[0]) for line in lines] == [second, first]
    assert all("failed" in line and "last 503" in line for line in lines)
    code, out, _ = wh(config, capsys, "deliveries", "list", "--state", "pending")
    assert out.strip() == "no webhook deliveries match"
    code, out, _ = wh(config, capsys, "deliveries", "list", "--before", str(second), "--json")
    assert [d["id"] for d in json.loads(out)] == [first]

    code, out, _ = wh(config, capsys, "deliveries", "show", str(first))
    assert code == 0 and "attempt 1 at" in out and "HTTP 503 in 40 ms (203.0.113.9)" in out
    code, out, _ = wh(config, capsys, "deliveries", "retry", str(first))
    assert (code, out.strip()) == (0, f"delivery {first} will be sent again now")
    code, out, _ = wh(config, capsys, "deliveries", "show", str(first), "--json")
    assert json.loads(out)["delivery"]["state"] == "pending"

    code, out, _ = wh(config, capsys, "recover", endpoint_id, "--since", "2h")
    assert code == 0 and out.startswith(f"1 failed deliveries of {endpoint_id}")
    code, out, _ = wh(config, capsys, "deliveries", "list", "--state", "failed")
    assert out.strip() == "no webhook deliveries match"
