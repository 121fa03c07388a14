"""``paymentd tasks list|show|retry|follow``: the reconnection task log without curl.

``list``, ``show`` and ``retry`` read and write the database through the task store
(``daemon.network.tasks``), as ``GET /api/v1/tasks``, ``GET /api/v1/tasks/{id}`` and
``POST /api/v1/tasks/{id}/retry`` do; a retried task is run by the daemon's reconnect
consumer (the queue's insert notification wakes it).

``follow`` is a live tail. By default (``--source auto``) it subscribes to the running
daemon's event stream (``GET /api/v1/events``, Server-Sent Events, with
``http.admin_token``): every webhook, task and SMS step as it happens, OLT steps
included. When the daemon's admin API cannot be reached (daemon down, admin token
unset, a 401) it says so on stderr and polls the task history in the database instead
(``task_events``, once a second): durable steps only, but it keeps working while the
daemon restarts, and it shows what other CLI processes did (an ``onu activate``'s
``queued``), which the daemon's in-process stream never sees. ``--source sse|db`` picks
one. ``--task ID`` follows one task from the database (auto): its whole history, then
until it succeeds, fails or is superseded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import httpx
import trio

from daemon.cli.common import UserError, load, with_config, with_db
from daemon.platform.config import Config

POLL_SECONDS = 1.0
# A followed task is done: the stream's kinds, and the history's (``tasks.FINAL_STATES``).
FINAL_BUS_EVENTS = ("task.succeeded", "task.failed", "task.superseded")
STATES = ("queued", "running", "succeeded", "failed", "superseded")


def _print_json(value: Any) -> None:
    from daemon.platform.http.problem import json_default

    print(json.dumps(value, default=json_default, indent=2))


def _short(text: str | None, width: int = 60) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_list(args: argparse.Namespace) -> int:
    from daemon.network import tasks

    cfg = load(args)
    rows = with_db(
        cfg,
        lambda db: tasks.list_recent(
            db,
            state=args.state,
            limit=args.limit,
            before_id=args.before,
            service_id=args.service,
            olt_name=args.olt,
            action=args.action,
        ),
    )
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no tasks")
    for t in rows:
        print(
            f"{t.id:<7} {t.created_at:%Y-%m-%d %H:%M}  {t.action:<10} service {t.service_id:<7}"
            f" {t.olt_name} {t.onu:<10} {t.state:<10} {t.attempts}  {_short(t.last_error)}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from daemon.network import tasks

    cfg = load(args)
    detail = with_db(cfg, tasks.get, args.task_id)
    if detail is None:
        raise UserError(f"no task {args.task_id} (see 'paymentd tasks list')")
    if args.json:
        _print_json(detail.as_json())
        return 0
    t = detail.task
    print(f"task {t.id}: {t.action} service {t.service_id} ({t.service_name or '-'})")
    print(f"  client     {t.client_id or '-'} {t.client_name or ''}  phone {t.phone or '-'}")
    print(f"  onu        {t.olt_name} {t.onu}")
    print(f"  state      {t.state} after {t.attempts} attempt(s)")
    if t.last_error:
        print(f"  error      {t.last_error}")
    print(f"  webhook    {t.webhook_uuid or '-'}  (dedupe key {t.dedupe_key})")
    print(f"  created    {t.created_at:%Y-%m-%d %H:%M:%S %Z}")
    if t.finished_at:
        print(f"  finished   {t.finished_at:%Y-%m-%d %H:%M:%S %Z}")
    if detail.sms is not None:
        s = detail.sms
        via = f"{s.provider or '-'} {s.provider_ref or ''}".strip()
        print(f"  sms        {s.id} to {s.phone}: {s.state} ({via})")
    print("history:")
    for e in detail.events:
        print(f"  {e.at:%Y-%m-%d %H:%M:%S}  {e.kind:<16} {_detail(e.detail)}")
    if t.olt_output:
        print("OLT output:")
        for line in t.olt_output.splitlines():
            print(f"  | {line}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from daemon.cli.operator import who_asked
    from daemon.network import tasks

    cfg = load(args)

    async def retry(db: Any) -> Any:
        try:
            return await tasks.retry(db, args.task_id, by=who_asked())
        except tasks.TaskNotFound:
            raise UserError(f"no task {args.task_id} (see 'paymentd tasks list')") from None
        except tasks.TaskNotRetryable as exc:
            raise UserError(
                f"task {args.task_id} is {exc.state}; only failed tasks can be retried"
            ) from None

    task = with_db(cfg, retry)
    print(f"task {task.id} queued again ({task.action} {task.olt_name} {task.onu})")
    return 0


def _detail(detail: Any) -> str:
    if isinstance(detail, str):  # jsonb without a codec arrives as text
        try:
            detail = json.loads(detail)
        except ValueError:
            return str(detail)
    if isinstance(detail, dict):
        return " ".join(f"{k}={v}" for k, v in detail.items())
    return str(detail)


# --- follow ---------------------------------------------------------------------------


def _note(text: str) -> None:
    """Progress for the operator on stderr; stdout carries only events."""
    print(f"paymentd: {text}", file=sys.stderr, flush=True)


class Unreachable(Exception):
    """The daemon's event stream is not available; the message says why."""


def admin_url(cfg: Config) -> str:
    """Where this host reaches the daemon's HTTP port (a wildcard address is local)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(cfg.http.host, cfg.http.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.http.port}"


async def sse_events(
    url: str, token: str, on_open: Callable[[], None] = lambda: None
) -> AsyncIterator[dict[str, Any]]:
    """The daemon's bus events, one dict each (``kind``, ``at``, ``id`` and the data);
    ``on_open`` once subscribed (nothing published from then on can be missed)."""
    timeout = httpx.Timeout(5.0, read=None)  # an idle stream sends a comment every 15 s
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    async with httpx.AsyncClient(timeout=timeout) as http:
        try:
            async with http.stream("GET", f"{url}/api/v1/events", headers=headers) as resp:
                if resp.status_code != 200:
                    raise Unreachable(f"{url}/api/v1/events answered HTTP {resp.status_code}")
                async for line in resp.aiter_lines():
                    if line == ": subscribed":
                        on_open()
                    elif line.startswith("data:"):
                        yield json.loads(line[5:])
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise Unreachable(f"cannot reach the daemon at {url} ({exc})") from None


def format_bus_event(event: dict[str, Any]) -> str:
    at = dt.datetime.fromtimestamp(float(event.get("at", 0))).strftime("%H:%M:%S")
    rest = {k: v for k, v in event.items() if k not in ("id", "kind", "at")}
    return f"{at}  {event.get('kind', '?'):<18} {_detail(rest)}"


async def follow_sse(cfg: Config, args: argparse.Namespace) -> str | None:
    """Print bus events until ``--count`` is reached; why it stopped, if it could not run."""
    token = cfg.http.admin_token.reveal()
    if not token:
        return "http.admin_token is empty, so the daemon's event stream is closed"
    url = args.url or admin_url(cfg)
    printed = 0
    try:
        opened = partial(_note, f"following the daemon's event stream at {url}/api/v1/events")
        async for event in sse_events(url, token, opened):
            if event.get("kind") == "dropped":
                print(f"(missed {event.get('count')} events: this terminal was too slow)")
                continue
            if args.task is not None and event.get("task_id") != args.task:
                continue
            print(format_bus_event(event), flush=True)
            printed += 1
            if args.count and printed >= args.count:
                return None
            if args.task is not None and event.get("kind") in FINAL_BUS_EVENTS:
                return None
    except Unreachable as exc:
        return str(exc)
    return "the daemon closed its event stream (it is stopping)"


async def follow_db(db: Any, args: argparse.Namespace) -> None:
    from daemon.network import tasks

    if args.task is not None:
        if await tasks.get(db, args.task) is None:
            raise UserError(f"no task {args.task} (see 'paymentd tasks list')")
        after = 0  # one task: its whole history, then what comes
    else:
        after = await tasks.last_event_id(db)
    _note(f"following the task history in the database (after event {after})")
    printed = 0
    while True:
        batch = await tasks.events_after(db, after, task_id=args.task)
        for e in batch:
            after = e.id
            at = e.at.astimezone()  # local time, like the event stream's lines
            text = f"{at:%H:%M:%S}  task {e.task_id:<6} {e.kind:<16} {_detail(e.detail)}"
            print(text, flush=True)
            printed += 1
            if args.count and printed >= args.count:
                return
        # The whole batch first: a success's sms_queued is written right after it. A
        # final step is the end only if the task is still finished: the history of a
        # task retried by an operator holds its earlier failure.
        if args.task is not None and any(e.kind in tasks.FINAL_STATES for e in batch):
            now = await tasks.get(db, args.task)
            if now is None or now.task.state in tasks.FINAL_STATES:
                return
        await trio.sleep(POLL_SECONDS)


def cmd_follow(args: argparse.Namespace) -> int:
    cfg = load(args)
    # One task: its history is in the database from its first step (the stream has only
    # what happens from now on, and never the CLI's own steps), so auto means db.
    source = "db" if args.source == "auto" and args.task is not None else args.source
    if source in ("auto", "sse"):
        why = trio.run(follow_sse, cfg, args)
        if why is None:
            return 0
        if source == "sse":
            raise UserError(f"{why}; try --source db")
        _note(f"{why}; polling the database every {POLL_SECONDS:g} s instead")
    with_db(cfg, follow_db, args)
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1, got {text!r}")
    return int(text)


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 1000, got {text!r}")
    return int(text)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser("tasks", help="the reconnection task log: list, show, retry, follow")
    t_sub = t.add_subparsers(dest="tasks_cmd", required=True, metavar="ACTION")

    ls = with_config(t_sub.add_parser("list", help="list tasks, newest first"))
    ls.add_argument("--state", choices=STATES)
    ls.add_argument("--service", type=_positive, metavar="SERVICE_ID")
    ls.add_argument("--olt", metavar="NAME")
    ls.add_argument("--action", choices=["activate", "deactivate"])
    ls.add_argument("--limit", type=_limit, default=50)
    ls.add_argument("--before", type=_positive, metavar="ID", help="older than this task id")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_list)

    sh = with_config(t_sub.add_parser("show", help="one task: its history, SMS and OLT output"))
    sh.add_argument("task_id", type=_positive, metavar="ID")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(fn=cmd_show)

    rt = with_config(t_sub.add_parser("retry", help="queue a failed task again"))
    rt.add_argument("task_id", type=_positive, metavar="ID")
    rt.set_defaults(fn=cmd_retry)

    fo = with_config(t_sub.add_parser("follow", help="live tail of webhooks, tasks and SMS"))
    fo.add_argument(
        "--source",
        choices=["auto", "sse", "db"],
        default="auto",
        help="the daemon's event stream (sse), the database (db), or sse if reachable (auto)",
    )
    fo.add_argument(
        "--task",
        type=_positive,
        metavar="ID",
        help="one task: its history so far, then until it is finished (from the database)",
    )
    fo.add_argument("--count", type=_positive, metavar="N", help="stop after N events")
    fo.add_argument("--url", help="the daemon's HTTP base URL (default: from http.host/port)")
    fo.set_defaults(fn=cmd_follow)
