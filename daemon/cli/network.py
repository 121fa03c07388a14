"""``paymentd network reconcile [--fix] [--exit-code]`` and ``paymentd network drift``:
drift between UISP, what paymentd applied and the OLTs — find it now, fix it, or show the
latest run's list."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from daemon.cli.common import UserError, load, with_config, with_db


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _line(item: Any) -> str:
    where = f"{item.olt_name or '-'} {item.onu or '-'}"
    states = f"UISP {item.uisp_state or '?'}, applied {item.applied_state or '-'}, "
    states += f"OLT {item.olt_state or '-'}"
    task = f"  -> task {item.task_id}" if item.task_id else ""
    return f"service {item.service_id:<8} {item.kind:<17} {where:<24} {states}{task}"


def _print(items: list[Any], as_json: bool, header: str) -> None:
    if as_json:
        from daemon.platform.http.problem import json_default

        print(json.dumps([dataclasses.asdict(i) for i in items], default=json_default, indent=2))
        return
    print(header)
    for item in items:
        print(_line(item))


def cmd_network(args: argparse.Namespace) -> int:
    cfg = load(args)
    if args.network_cmd == "reconcile":
        from daemon import wiring
        from daemon.network.drift import Report
        from daemon.platform import scheduler
        from daemon.platform.deps import Deps
        from daemon.platform.events import EventBus
        from daemon.platform.health import Health
        from daemon.platform.metrics import Metrics
        from daemon.uisp.client import UispError

        async def reconcile(db: Any) -> Report:
            deps = Deps(cfg, db, Metrics(), EventBus(), Health())
            done: list[Report] = []

            async def run() -> str:
                done.append(await wiring.reconcile_drift(deps, None, fix=args.fix, trigger="cli"))
                return done[0].summary()

            # The scheduled job's lease: never at the same time as the daemon's own run.
            job = scheduler.Job("drift", cfg.drift.interval_seconds, run)
            try:
                await scheduler.run_once(db, [job], "drift")
            except scheduler.JobBusy:
                raise UserError(
                    "a drift run is in progress (the daemon's scheduled one); "
                    "see 'paymentd network drift' when it has finished"
                ) from None
            except Exception as exc:
                # Trio wraps what fails inside the run's nursery; UISP's answer is the news.
                failed = [e for e in _leaves(exc) if isinstance(e, UispError)]
                if not failed:
                    raise
                raise UserError(
                    f"UISP ({cfg.uisp.base_url}): {failed[0]}; check uisp.base_url and "
                    "uisp.app_key (the run is recorded as failed)"
                ) from None
            return done[0]

        report = with_db(cfg, reconcile)
        _print(report.items, args.json, report.summary())
        # For monitoring scripts: 1 = drift found (fixed or not), 2 stays a usage error.
        return 1 if args.exit_code and report.items else 0
    if args.network_cmd == "drift":
        from daemon.network import drift_store

        found = with_db(cfg, drift_store.latest)
        if found is None:
            last = with_db(cfg, drift_store.last_runs, 1)
            if last and last[0].state == "failed":
                # Not "none yet": the job runs and fails (UISP unreachable, a bad key).
                raise UserError(
                    f"no drift run has finished; the latest (run {last[0].id}, "
                    f"{last[0].started_at:%Y-%m-%d %H:%M}) failed: {last[0].error}"
                )
            raise UserError("no drift run yet: run 'paymentd network reconcile'")
        run, items = found
        if args.kind:
            items = [i for i in items if i.kind == args.kind]
        header = (
            f"run {run.id} ({run.mode}, {run.trigger}) finished {run.finished_at:%Y-%m-%d %H:%M}:"
            f" {run.services} service(s) compared, {run.drifts} drift(s), "
            f"{run.tasks_queued} task(s) queued"
        )
        _print(items, args.json, header)
        return 0
    raise AssertionError(args.network_cmd)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from daemon.network.drift_store import KINDS

    n = sub.add_parser("network", help="drift between UISP, paymentd and the OLTs")
    n_sub = n.add_subparsers(dest="network_cmd", required=True, metavar="ACTION")
    rc = with_config(
        n_sub.add_parser(
            "reconcile",
            help="compare UISP, the task log and the OLTs now; list the drift",
            description="Compare every active or suspended UISP service that has an ONU "
            "mapping with what paymentd last applied and (within [drift] limits) with the "
            "ONU's state on its OLT. With --fix, queue the tasks a webhook would have. "
            "Exit status: 0 done (drift or not, unless --exit-code), 1 drift found "
            "(with --exit-code), 2 a configuration or usage error (UISP unreachable, a run "
            "in progress).",
        )
    )
    rc.add_argument("--fix", action="store_true", help="queue the tasks that fix the drift")
    rc.add_argument(
        "--exit-code",
        action="store_true",
        help="exit 1 when the run found drift (even if --fix queued its tasks), for "
        "monitoring scripts",
    )
    rc.add_argument("--json", action="store_true")
    dr = with_config(n_sub.add_parser("drift", help="the latest run's drift list"))
    dr.add_argument("--kind", choices=KINDS)
    dr.add_argument("--json", action="store_true")
    n.set_defaults(fn=cmd_network)
