"""localstripe (a stateful fake Stripe server, PyPI ``localstripe``) for the test session.

``running_localstripe()`` starts one server as a subprocess on a free port, waits until it
answers an authenticated ``GET /v1/balance``, and stops it afterwards; ``conftest.py``
exposes it as the session-scoped ``localstripe`` fixture (a ``LocalStripe`` with its URL).
If the package is not installed the fixture skips the test, saying so.

Two things differ from a bare ``localstripe --port N``, both for the same reason: the
session must not share state with anything else on the machine.

- ``--from-scratch``: otherwise it loads ``/tmp/localstripe.pickle`` left by whichever
  localstripe ran last on this host.
- Its store is never written back: localstripe pickles its *whole* store to that fixed
  path after every POST, so every session on the machine writes the same file, and each
  create costs more than the one before (0.7 ms → 3.5 ms per PaymentIntent after 900).
  The launcher below turns that dump off and then runs localstripe's own ``start()``.

What localstripe can and cannot fake is written down in docs/ARCHITECTURE.md ("Stripe").
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

# Any sk_test_ key works: localstripe only checks the prefix.
API_KEY = "sk_test_paymentd"
_LAUNCH = (
    "import sys\n"
    "from localstripe import resources, server\n"
    "resources.Store.dump_to_disk = lambda self: None\n"
    "sys.argv[0] = 'localstripe'\n"
    "server.start()\n"
)
START_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class LocalStripe:
    url: str  # http://127.0.0.1:PORT, the value of payments.stripe_base_url in tests
    api_key: str = API_KEY

    def register_webhook(self, name: str, url: str, secret: str) -> None:
        """Make localstripe POST its events, signed with ``secret``, to ``url``.

        localstripe keeps webhooks by name for its whole life: tests use unique names and
        their own secret, so one test never receives another's events.
        """
        r = httpx.post(f"{self.url}/_config/webhooks/{name}", data={"url": url, "secret": secret})
        r.raise_for_status()


def available() -> str | None:
    """Why localstripe cannot run here, or None."""
    if importlib.util.find_spec("localstripe") is None:
        return "localstripe is not installed (pip install -e '.[test]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def running_localstripe() -> Iterator[LocalStripe]:
    """One localstripe subprocess for as long as the block runs."""
    reason = available()
    if reason is not None:
        raise RuntimeError(reason)
    with tempfile.TemporaryFile() as output:
        for _attempt in range(3):  # the free port may be taken before the child binds it
            port = _free_port()
            proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCH, "--port", str(port), "--from-scratch"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            try:
                server = LocalStripe(f"http://127.0.0.1:{port}")
                if _wait_ready(proc, server):
                    yield server
                    return
            finally:
                _stop(proc)
        output.seek(0)
        tail = output.read()[-2000:].decode(errors="replace")
        raise RuntimeError(f"localstripe did not start; its output ends with:\n{tail}")


def _wait_ready(proc: subprocess.Popen[bytes], server: LocalStripe) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            r = httpx.get(f"{server.url}/v1/balance", auth=(server.api_key, ""), timeout=2)
            if r.status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
