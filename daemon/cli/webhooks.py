"""``paymentd webhooks …``: outbound webhook endpoints and their deliveries.

``endpoints add|list|show|update|remove|rotate-secret|test``, ``callback-secret
show|rotate`` (the daemon-wide secret signing payments' callbacks), ``deliveries
list|show|retry`` and ``recover ENDPOINT --since``: the same actions as
``/api/v1/webhooks`` (``daemon.webhooks.manage``), straight on the database, so they work
while the daemon is down (the daemon sends what they queue once it runs).

``add`` and ``rotate-secret`` print the signing secret on stdout, once, and nothing else
there; a caller-chosen secret is read from a file (``--secret-file``, ``-`` for stdin),
never from the command line, where ``ps`` and shell history would keep it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Any

from daemon.cli.common import UserError, load, with_config, with_db

_AGO = re.compile(r"(\d+)\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
BY = "the CLI"


def parse_since(text: str) -> dt.datetime:
    """ISO 8601 with a zone (``2026-01-31T12:00Z``), or an age: ``90m``, ``2h``, ``3d``."""
    if m := _AGO.fullmatch(text.strip()):
        delta = dt.timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
        return dt.datetime.now(dt.UTC) - delta
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(
            f"--since {text[:40]!r}: give a time like 2026-01-31T12:00:00Z or an age like 2h"
        ) from None
    if when.tzinfo is None:
        raise UserError(f"--since {text[:40]!r}: give a time zone (Z or +01:00)")
    return when


def _limit(text: str) -> int | None:
    """A positive integer, or ``none`` to clear the limit."""
    if text.lower() == "none":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("a positive integer, or 'none'")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError("a whole number from 1 to 10000")
    return int(text)


def _read_secret(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UserError(f"--secret-file {path}: {exc.strerror}") from None
    return text.strip()


def _json(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif isinstance(value, list):
        value = [dataclasses.asdict(v) for v in value]
    return json.dumps(value, default=str, indent=2)


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def _endpoint_line(e: Any) -> str:
    state = "enabled" if e.enabled else f"disabled ({e.disabled_reason})"
    return f"{e.id}  {state:<20} {','.join(e.event_types):<30} {e.url}"


def _delivery_line(d: Any) -> str:
    status = "-" if d.last_status_code is None else str(d.last_status_code)
    target = d.endpoint_id or d.target_url
    return (
        f"{d.id:>8}  {d.state:<9} {d.event_type:<24} attempts {d.attempts:<2} last {status:<4}"
        f" next {_when(d.next_attempt_at)}  {target}"
    )


def _secret_out(secret: str, what: str) -> None:
    print(secret)
    print(f"{what}; keep the secret now, it cannot be shown again", file=sys.stderr)


def cmd_endpoints(args: argparse.Namespace) -> int:
    from daemon.platform.secrets import load_keyring
    from daemon.webhooks import endpoints, manage

    cfg = load(args)
    action = args.endpoints_cmd
    if action == "add":
        secret = _read_secret(args.secret_file)
        box = load_keyring(cfg.secrets)
        fields: dict[str, Any] = {
            "url": args.url,
            "description": args.description,
            "event_types": args.event_type or ["*"],
            "enabled": not args.disabled,
            "rate_limit_per_second": args.rate_limit,
            "max_concurrency": args.max_concurrency,
            "legacy_signature": args.legacy_signature,
            "secret": secret,
        }
        endpoint, secret = with_db(cfg, lambda db: manage.create(db, box, by=BY, **fields))
        _secret_out(secret, f"webhook endpoint {endpoint.id} created for {endpoint.url}")
        return 0
    if action == "list":
        rows = with_db(
            cfg, lambda db: endpoints.list_endpoints(db, enabled=args.enabled, limit=10_000)
        )
        if args.json:
            print(_json(rows))
        elif not rows:
            print("no webhook endpoints; add one with 'paymentd webhooks endpoints add URL'")
        else:
            for e in rows:
                print(_endpoint_line(e))
        return 0
    if action == "show":
        detail = with_db(cfg, lambda db: manage.describe(db, args.id))
        if args.json:
            print(_json(detail))
            return 0
        e = detail.endpoint
        print(_endpoint_line(e))
        print(f"  description: {e.description or '-'}")
        print(
            f"  rate limit/s: {e.rate_limit_per_second or '-'}  concurrency:"
            f" {e.max_concurrency or 'default'}  legacy signature: {e.legacy_signature}"
        )
        print(f"  failing since: {_when(e.failing_since)}  created: {_when(e.created_at)}")
        for s in detail.secrets:
            expiry = "signing" if s.expires_at is None else f"signs until {_when(s.expires_at)}"
            print(f"  secret {s.id}: created {_when(s.created_at)}, {expiry}")
        return 0
    if action == "update":
        changes = _changes(args)
        if not changes:
            raise UserError("nothing to change: give --url, --event-type, --enable, … (see --help)")
        e = with_db(cfg, lambda db: manage.update(db, args.id, by=BY, **changes))
        print(_endpoint_line(e))
        return 0
    if action == "remove":
        with_db(cfg, lambda db: manage.remove(db, args.id, by=BY))
        print(f"removed {args.id}")
        return 0
    if action == "rotate-secret":
        box = load_keyring(cfg.secrets)
        overlap = cfg.webhooks.secret_overlap_seconds if args.overlap is None else args.overlap
        try:
            endpoints.check_overlap(overlap)
        except endpoints.EndpointError:
            raise UserError(
                f"--overlap: give 0 to {endpoints.MAX_OVERLAP_SECONDS:.0f} seconds"
            ) from None
        secret = _read_secret(args.secret_file)
        new, _detail = with_db(
            cfg,
            lambda db: manage.rotate_secret(
                db, box, args.id, overlap_seconds=overlap, secret=secret, by=BY
            ),
        )
        _secret_out(new, f"new secret for {args.id}; the old one signs for {overlap:.0f} s more")
        return 0
    sent = with_db(cfg, lambda db: manage.send_test(db, args.id, by=BY))
    print(
        f"test event {sent.event_id} queued as delivery {sent.delivery.id};"
        f" see 'paymentd webhooks deliveries show {sent.delivery.id}'"
    )
    return 0


def cmd_callback_secret(args: argparse.Namespace) -> int:
    from daemon.platform.secrets import load_keyring
    from daemon.webhooks import endpoints, manage

    cfg = load(args)
    if args.callback_cmd == "show":
        rows = with_db(cfg, lambda db: endpoints.secrets_of(db, None))
        if not rows:
            print("no callback secret yet: the daemon makes one when it starts; 'rotate' shows one")
        for s in rows:
            expiry = "signing" if s.expires_at is None else f"signs until {_when(s.expires_at)}"
            print(f"callback secret {s.id}: created {_when(s.created_at)}, {expiry}")
        return 0
    box = load_keyring(cfg.secrets)
    overlap = cfg.webhooks.secret_overlap_seconds if args.overlap is None else args.overlap
    if overlap < 0:
        raise UserError("--overlap: give 0 or more seconds")
    secret = _read_secret(args.secret_file)
    new, _ = with_db(
        cfg,
        lambda db: manage.rotate_callback_secret(
            db, box, overlap_seconds=overlap, secret=secret, by=BY
        ),
    )
    _secret_out(
        new,
        "new callback secret (signs payments' status_callback_url deliveries);"
        f" the old one signs for {overlap:.0f} s more",
    )
    return 0


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name, value in (
        ("url", args.url),
        ("description", args.description),
        ("event_types", args.event_type),
        ("enabled", args.enabled),
        ("legacy_signature", args.legacy_signature),
    ):
        if value is not None:
            changes[name] = value
    for name, given in (
        ("rate_limit_per_second", args.rate_limit),
        ("max_concurrency", args.max_concurrency),
    ):
        if given is not _KEEP:
            changes[name] = given
    return changes


def cmd_deliveries(args: argparse.Namespace) -> int:
    from daemon.webhooks import deliveries, manage

    cfg = load(args)
    action = args.deliveries_cmd
    if action == "list":
        since = None if args.since is None else parse_since(args.since)
        rows = with_db(
            cfg,
            lambda db: deliveries.list_deliveries(
                db,
                endpoint_id=args.endpoint,
                state=args.state,
                event_type=args.event_type,
                since=since,
                before_id=args.before,
                limit=args.limit,
            ),
        )
        if args.json:
            print(_json(rows))
        elif not rows:
            print("no webhook deliveries match")
        else:
            for d in rows:
                print(_delivery_line(d))
        return 0
    delivery_id = _delivery_id(args.id)
    if action == "show":
        detail = with_db(cfg, lambda db: manage.delivery(db, delivery_id))
        if args.json:
            print(_json(detail))
            return 0
        d = detail.delivery
        print(_delivery_line(d))
        print(f"  event {d.event_id}  last error: {d.last_error or '-'}")
        for a in detail.attempts:
            outcome = a.error or f"HTTP {a.status_code}"
            print(
                f"  attempt {a.attempt} at {_when(a.started_at)}: {outcome} in {a.duration_ms} ms"
                f" ({a.address or 'not connected'})"
            )
        return 0
    retried = with_db(cfg, lambda db: manage.retry(db, delivery_id, by=BY))
    print(f"delivery {retried.id} will be sent again now")
    return 0


def _positive_id(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) < 2**63:
        raise argparse.ArgumentTypeError("a delivery id (a positive integer)")
    return int(text)


def _delivery_id(text: str) -> int:
    if not text.isdigit() or int(text) > 2**63 - 1:
        raise UserError(
            f"no webhook delivery {text[:40]!r} (see 'paymentd webhooks deliveries list')"
        )
    return int(text)


def cmd_recover(args: argparse.Namespace) -> int:
    from daemon.webhooks import manage

    cfg = load(args)
    since = parse_since(args.since)
    count = with_db(cfg, lambda db: manage.recover(db, args.endpoint, since, by=BY))
    print(
        f"{count} failed deliveries of {args.endpoint} since {since:%Y-%m-%d %H:%M:%S %Z} re-sent"
    )
    return 0


_KEEP: Any = object()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from daemon.webhooks.deliveries import STATES

    p = sub.add_parser("webhooks", help="outbound webhooks: endpoints, deliveries, recovery")
    groups = p.add_subparsers(dest="webhooks_cmd", required=True, metavar="GROUP")

    ep = groups.add_parser("endpoints", help="partners' endpoints and their signing secrets")
    ep_actions = ep.add_subparsers(dest="endpoints_cmd", required=True, metavar="ACTION")
    add = with_config(
        ep_actions.add_parser("add", help="register an endpoint; prints its secret once")
    )
    add.add_argument("url", help="https://… (or http://), no credentials in it")
    add.add_argument("--description", default="")
    add.add_argument(
        "--event-type",
        action="append",
        help="payment.succeeded, payment.* or *; repeat for several (default: *;"
        " endpoint.disabled only when named)",
    )
    add.add_argument("--disabled", action="store_true", help="register it disabled")
    add.add_argument("--rate-limit", type=_limit, help="requests per second at most")
    add.add_argument("--max-concurrency", type=_limit, help="requests in flight at most")
    add.add_argument(
        "--legacy-signature",
        action="store_true",
        help="also send X-Webhook-Signature (hex HMAC-SHA256 of the body)",
    )
    add.add_argument("--secret-file", help="read the secret (whsec_…) from here; - for stdin")

    lst = with_config(ep_actions.add_parser("list", help="list endpoints (never shows secrets)"))
    state = lst.add_mutually_exclusive_group()
    state.add_argument("--enabled", dest="enabled", action="store_const", const=True)
    state.add_argument("--disabled", dest="enabled", action="store_const", const=False)
    lst.add_argument("--json", action="store_true")

    show = with_config(ep_actions.add_parser("show", help="one endpoint and its secrets' expiry"))
    show.add_argument("id", help="ep_…, see 'paymentd webhooks endpoints list'")
    show.add_argument("--json", action="store_true")

    upd = with_config(ep_actions.add_parser("update", help="change an endpoint"))
    upd.add_argument("id")
    upd.add_argument("--url")
    upd.add_argument("--description")
    upd.add_argument(
        "--event-type", action="append", help="replaces the filter; repeat for several"
    )
    on = upd.add_mutually_exclusive_group()
    on.add_argument("--enable", dest="enabled", action="store_const", const=True)
    on.add_argument("--disable", dest="enabled", action="store_const", const=False)
    upd.add_argument("--rate-limit", type=_limit, default=_KEEP, help="N per second, or none")
    upd.add_argument("--max-concurrency", type=_limit, default=_KEEP, help="N, or none")
    legacy = upd.add_mutually_exclusive_group()
    legacy.add_argument(
        "--legacy-signature", dest="legacy_signature", action="store_const", const=True
    )
    legacy.add_argument(
        "--no-legacy-signature", dest="legacy_signature", action="store_const", const=False
    )

    rm = with_config(ep_actions.add_parser("remove", help="delete an endpoint and its deliveries"))
    rm.add_argument("id")

    rot = with_config(
        ep_actions.add_parser(
            "rotate-secret", help="a new secret (printed once); the old signs a while"
        )
    )
    rot.add_argument("id")
    rot.add_argument(
        "--overlap",
        type=float,
        help="seconds the old secret keeps signing (default: webhooks.secret_overlap_seconds)",
    )
    rot.add_argument("--secret-file", help="read the new secret from here; - for stdin")

    test = with_config(ep_actions.add_parser("test", help="send a webhook.test event to it"))
    test.add_argument("id")
    ep.set_defaults(fn=cmd_endpoints)

    dl = groups.add_parser("deliveries", help="what was sent where, attempt by attempt")
    dl_actions = dl.add_subparsers(dest="deliveries_cmd", required=True, metavar="ACTION")
    dlist = with_config(dl_actions.add_parser("list", help="newest first"))
    dlist.add_argument("--endpoint", help="ep_…")
    dlist.add_argument("--state", choices=STATES)
    dlist.add_argument("--event-type")
    dlist.add_argument("--since", help="2026-01-31T12:00:00Z, or an age: 90m, 2h, 3d")
    dlist.add_argument("--before", type=_positive_id, help="only ids below this (the next page)")
    dlist.add_argument("--limit", type=_positive, default=50)
    dlist.add_argument("--json", action="store_true")
    dshow = with_config(dl_actions.add_parser("show", help="one delivery with its attempts"))
    dshow.add_argument("id")
    dshow.add_argument("--json", action="store_true")
    retry = with_config(dl_actions.add_parser("retry", help="send it again now"))
    retry.add_argument("id")
    dl.set_defaults(fn=cmd_deliveries)

    cb = groups.add_parser(
        "callback-secret", help="the secret signing payments' status_callback_url callbacks"
    )
    cb_actions = cb.add_subparsers(dest="callback_cmd", required=True, metavar="ACTION")
    with_config(cb_actions.add_parser("show", help="the secrets' ids and expiry (not the values)"))
    cbrot = with_config(
        cb_actions.add_parser(
            "rotate", help="a new secret, printed once for the callers; the old signs a while"
        )
    )
    cbrot.add_argument(
        "--overlap",
        type=float,
        help="seconds the old secret keeps signing (default: webhooks.secret_overlap_seconds)",
    )
    cbrot.add_argument("--secret-file", help="read the new secret from here; - for stdin")
    cb.set_defaults(fn=cmd_callback_secret)

    rec = with_config(
        groups.add_parser("recover", help="re-send an endpoint's failed deliveries since a time")
    )
    rec.add_argument("endpoint", help="ep_…")
    rec.add_argument("--since", required=True, help="2026-01-31T12:00:00Z, or an age: 2h, 3d")
    rec.set_defaults(fn=cmd_recover)
