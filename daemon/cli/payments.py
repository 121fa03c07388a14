"""``paymentd payments reconcile|expire|list|show|stripe-secret``: the payment jobs once
(for cron and operators), a look at payments without the HTTP API, and Stripe's signing
secrets (``daemon.cli.stripe_secrets``).

``reconcile`` and ``expire`` run the scheduler's own jobs (``payments_reconcile``,
``payments_expire``) under the job's lease, so they never run at the same time as the
daemon's scheduler does, and build the configured provider for the run.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from daemon.cli import stripe_secrets
from daemon.cli.common import UserError, load, with_config, with_db

JOB_NAMES = {"reconcile": "payments_reconcile", "expire": "payments_expire"}
STATUSES = (
    "created", "pending", "requires_action", "processing", "requires_capture", "unknown",
    "succeeded", "failed", "canceled", "expired",
)  # fmt: skip


def cmd_payments(args: argparse.Namespace) -> int:
    from daemon import wiring
    from daemon.payments import currency, store
    from daemon.platform import scheduler
    from daemon.platform.deps import Deps
    from daemon.platform.events import EventBus
    from daemon.platform.health import Health
    from daemon.platform.http.problem import json_default
    from daemon.platform.metrics import Metrics

    if args.payments_cmd == "stripe-secret":
        return stripe_secrets.cmd(args)
    cfg = load(args)
    if args.payments_cmd in JOB_NAMES:
        if cfg.payments.provider == "none":
            raise UserError('payments.provider is "none": there is no provider to ask')
        name = JOB_NAMES[args.payments_cmd]

        async def run(db: Any) -> str:
            jobs = wiring.jobs(Deps(cfg, db, Metrics(), EventBus(), Health()))
            try:
                return await scheduler.run_once(db, jobs, name)
            except scheduler.JobBusy as exc:
                raise UserError(f"{exc} (the daemon is running it now)") from None

        print(f"{args.payments_cmd}: {with_db(cfg, run)}")
        return 0
    if args.payments_cmd == "list":

        async def rows(db: Any) -> list[store.Payment]:
            return await store.list_page(
                db, status=args.status, customer=args.customer, created_gte=None,
                created_lt=None, before_seq=None, limit=args.limit,
            )  # fmt: skip

        found = with_db(cfg, rows)
        if args.json:
            print(json.dumps([p.public() for p in found], default=json_default, indent=2))
            return 0
        if not found:
            print("no payments")
        for p in found:
            amount = currency.format_amount(p.amount, p.currency)
            print(f"{p.id}  {p.status:<16} {amount:>16}  {p.created_at:%Y-%m-%d %H:%M}"
                  f"  {p.customer or '-'}")  # fmt: skip
        return 0
    if args.payments_cmd == "show":

        async def one(db: Any) -> dict[str, Any]:
            payment = await store.get(db, args.id)
            if payment is None:
                raise UserError(f"no payment {args.id!r} (see 'paymentd payments list')")
            history = [e.public() for e in await store.events(db, args.id)]
            return {**payment.public(), "events": history}

        print(json.dumps(with_db(cfg, one), default=json_default, indent=2))
        return 0
    raise AssertionError(args.payments_cmd)


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 1000, got {text!r}")
    return int(text)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "payments", help="payments: reconcile or expire now, list, show; Stripe signing secrets"
    )
    p_sub = p.add_subparsers(dest="payments_cmd", required=True, metavar="ACTION")
    with_config(
        p_sub.add_parser(
            "reconcile", help="re-fetch stale pending/processing/unknown payments once"
        )
    )
    with_config(p_sub.add_parser("expire", help="cancel and expire overdue pending payments once"))
    ls = with_config(p_sub.add_parser("list", help="list payments, newest first"))
    ls.add_argument("--status", choices=STATUSES)
    ls.add_argument("--customer")
    ls.add_argument("--limit", type=_limit, default=50)
    ls.add_argument("--json", action="store_true")
    show = with_config(p_sub.add_parser("show", help="one payment and its history (JSON)"))
    show.add_argument("id")
    stripe_secrets.register(p_sub)
    p.set_defaults(fn=cmd_payments)
