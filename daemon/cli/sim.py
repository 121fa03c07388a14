"""``paymentd sim olt`` and ``paymentd demo``: the simulators and the all-in-one demo."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import trio
import trio_asyncio

from daemon.cli.common import setup_logging

# Kept here, not imported from daemon.demo: argparse needs them before the demo's imports.
SCENARIOS = ("reconnect", "suspend", "olt-down")


def cmd_sim(args: argparse.Namespace) -> int:
    from daemon.network.olt.cli import run_simulator_forever

    setup_logging("info")

    async def main() -> None:
        async with trio_asyncio.open_loop():
            await run_simulator_forever(args.host, args.port)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from daemon.demo import run_demo

    setup_logging("warning" if not args.verbose else "info")
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run_demo, Path(args.dir), args.port, args.scenario)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = sub.add_parser("sim", help="simulators")
    sim_sub = sim.add_subparsers(dest="sim_cmd", required=True, metavar="WHAT")
    so = sim_sub.add_parser("olt", help="run the OLT simulator (Huawei and ZTE CLIs over SSH)")
    so.add_argument("--host", default="127.0.0.1")
    so.add_argument("--port", type=int, default=2222, help="first port; one port per device")
    sim.set_defaults(fn=cmd_sim)

    demo = sub.add_parser(
        "demo",
        help="everything on one machine: embedded PostgreSQL, simulated OLTs, fake UISP and SMS",
    )
    demo.add_argument("--dir", default=".demo", help="where the demo keeps its database and config")
    demo.add_argument("--port", type=int, default=8080, help="HTTP port of the daemon")
    demo.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="reconnect",
        help="reconnect: wait for your curls (default); suspend: UISP suspends a service; "
        "olt-down: an OLT drops every session while a reconnection arrives",
    )
    demo.add_argument("--verbose", "-v", action="store_true")
    demo.set_defaults(fn=cmd_demo)
