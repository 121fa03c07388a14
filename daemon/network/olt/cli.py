"""``paymentd sim olt``: run the demo OLT simulator in the foreground."""

from __future__ import annotations

from functools import partial

import trio

from daemon.network.olt.simulator import SimDevice, demo_devices, serve
from daemon.network.olt.ssh import host_key_fingerprint

__all__ = ["describe", "run_simulator_forever"]


def describe(device: SimDevice, host: str, port: int) -> str:
    """A few lines telling an operator how to reach the device and what it holds."""
    lines = [
        f"{device.name}: {device.vendor} ({device.hostname}) at {host}:{port}",
        f"  ssh -p {port} {device.username}@{host}    password: {device.password}"
        + (f"    enable password: {device.enable_password}" if device.enable_password else "")
        + ("    (the CLI asks Username:/Password:)" if device.cli_login else ""),
        f"  host key {host_key_fingerprint(device.public_host_key())}",
    ]
    for onu in sorted(device.onus.values(), key=lambda o: o.key):
        state = "active" if onu.active else "deactivated"
        lines.append(f"  ONU {onu.frame}/{onu.slot}/{onu.port}:{onu.onu_id}  {state}")
    return "\n".join(lines)


async def run_simulator_forever(host: str = "127.0.0.1", base_port: int = 2222) -> None:
    """Serve the demo devices on ``base_port``, ``base_port + 1``, ... until cancelled
    (Ctrl-C). Call inside ``trio_asyncio.open_loop()``."""
    devices = demo_devices()
    async with trio.open_nursery() as nursery:
        started: list[tuple[SimDevice, int]] = await nursery.start(
            partial(serve, devices, host, base_port=base_port)
        )
        for device, port in started:
            print(describe(device, host, port), flush=True)
        print("OLT simulator running; Ctrl-C to stop.", flush=True)
