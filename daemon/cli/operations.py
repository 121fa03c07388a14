"""``paymentd queues …``, ``paymentd uisp …`` and ``paymentd jobs …``: what an operator does
when something did not go through — list what failed, replay it, run a periodic job now."""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from daemon.cli import operator
from daemon.cli.common import UserError, load, with_config, with_db


def _print_json(rows: list[Any]) -> None:
    from daemon.platform.http.problem import json_default

    print(json.dumps(rows, default=json_default, indent=2))


def cmd_queues(args: argparse.Namespace) -> int:
    from daemon import wiring
    from daemon.platform import queues

    cfg = load(args)
    if args.queues_cmd == "failed":
        if args.queue is not None and args.queue not in wiring.QUEUE_NAMES:
            raise UserError(
                f"--queue: unknown queue {args.queue!r} (one of {', '.join(wiring.QUEUE_NAMES)})"
            )
        rows = with_db(
            cfg,
            lambda db: queues.list_dead(
                db, queue=args.queue, include_replayed=args.all, limit=args.limit
            ),
        )
        if args.json:
            _print_json(rows)
        elif not rows:
            print("no dead-lettered messages")
        for r in [] if args.json else rows:
            replayed = f" (replayed {r.replayed_at:%Y-%m-%d %H:%M})" if r.replayed_at else ""
            print(
                f"{r.id:<6} {r.queue:<12} {r.failed_at:%Y-%m-%d %H:%M}  "
                f"{json.dumps(r.message)}  {r.reason}{replayed}"
            )
        return 0
    if args.queues_cmd == "replay":

        async def replay(db: Any) -> list[str]:
            try:
                done = await wiring.replay_dead(db, args.ids)
            except queues.DeadLetterNotFound as exc:
                raise UserError(
                    f"no dead letter {exc} waiting for a replay (see 'paymentd queues failed');"
                    " nothing replayed"
                ) from None
            return [f"replayed {d.id}: {d.queue} {json.dumps(d.message)}" for d in done]

        for line in with_db(cfg, replay):
            print(line)
        return 0
    raise AssertionError(args.queues_cmd)


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 1000, got {text!r}")
    return int(text)


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def cmd_uisp(args: argparse.Namespace) -> int:
    from daemon import wiring
    from daemon.uisp import webhooks

    cfg = load(args)
    if args.uisp_cmd == "list":
        rows = with_db(cfg, lambda db: webhooks.list_recent(db, state=args.state, limit=args.limit))
        if args.json:
            _print_json(rows)
            return 0
        if not rows:
            print("no webhooks" + (f" in state {args.state}" if args.state else ""))
        for w in rows:
            print(
                f"{w.uuid}  {w.received_at:%Y-%m-%d %H:%M}  {w.event_name:<24} "
                f"{w.state:<9} {w.outcome or ''}"
            )
        return 0
    if args.uisp_cmd == "replay":

        async def replay(db: Any) -> list[str]:
            try:
                done = await wiring.replay_webhooks(db, args.uuids)
            except webhooks.WebhookNotFound as exc:
                raise UserError(
                    f"no stored webhook {exc} (see 'paymentd uisp list'); nothing replayed"
                ) from None
            return [f"queued {w.uuid} ({w.event_name}) again" for w in done]

        for line in with_db(cfg, replay):
            print(line)
        return 0
    raise AssertionError(args.uisp_cmd)


def cmd_jobs(args: argparse.Namespace) -> int:
    from daemon import wiring
    from daemon.platform import scheduler
    from daemon.platform.deps import Deps
    from daemon.platform.events import EventBus
    from daemon.platform.health import Health
    from daemon.platform.metrics import Metrics

    cfg = load(args)
    if args.jobs_cmd == "list":

        async def show(db: Any) -> list[scheduler.JobState]:
            await scheduler.register(
                db, wiring.jobs(Deps(cfg, db, Metrics(), EventBus(), Health()))
            )
            return await scheduler.states(db)

        for s in with_db(cfg, show):
            when = f"{s.next_run_at:%Y-%m-%d %H:%M:%S}"
            last = s.last_outcome or s.last_error or "-"
            print(f"{s.name:<12} every {s.interval_seconds:g} s; next {when}; {last}")
        return 0
    if args.jobs_cmd == "run":

        async def run(db: Any) -> str:
            jobs = wiring.jobs(Deps(cfg, db, Metrics(), EventBus(), Health()))
            try:
                return await scheduler.run_once(db, jobs, args.name)
            except (scheduler.UnknownJob, scheduler.JobBusy) as exc:
                raise UserError(str(exc)) from None

        print(f"{args.name}: {with_db(cfg, run)}")
        return 0
    raise AssertionError(args.jobs_cmd)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = sub.add_parser("queues", help="dead-lettered queue messages: list and replay")
    q_sub = q.add_subparsers(dest="queues_cmd", required=True, metavar="ACTION")
    failed = with_config(q_sub.add_parser("failed", help="list dead-lettered messages"))
    failed.add_argument("--queue", help="only this queue")
    failed.add_argument("--all", action="store_true", help="include replayed ones")
    failed.add_argument("--limit", type=_limit, default=50)
    failed.add_argument("--json", action="store_true")
    rp = with_config(q_sub.add_parser("replay", help="send dead-lettered messages again"))
    rp.add_argument("ids", nargs="+", type=int, metavar="ID")
    q.set_defaults(fn=cmd_queues)

    u = sub.add_parser("uisp", help="stored UISP webhooks: list and replay; test the connection")
    u_sub = u.add_subparsers(dest="uisp_cmd", required=True, metavar="ACTION")
    ul = with_config(u_sub.add_parser("list", help="list stored webhooks, newest first"))
    ul.add_argument("--state", choices=["queued", "processed", "failed"])
    ul.add_argument("--limit", type=_limit, default=50)
    ul.add_argument("--json", action="store_true")
    ur = with_config(u_sub.add_parser("replay", help="re-run stored webhooks (any state)"))
    ur.add_argument("uuids", nargs="+", type=_uuid, metavar="UUID")
    u.set_defaults(fn=cmd_uisp)
    operator.register_uisp_test(u_sub)

    j = sub.add_parser("jobs", help="periodic jobs: list, or run one now")
    j_sub = j.add_subparsers(dest="jobs_cmd", required=True, metavar="ACTION")
    with_config(j_sub.add_parser("list", help="list jobs and their next run"))
    jr = with_config(j_sub.add_parser("run", help="run a job once, now"))
    jr.add_argument("name")
    j.set_defaults(fn=cmd_jobs)
