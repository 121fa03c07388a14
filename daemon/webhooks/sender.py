"""One webhook exchange: POST the signed body, read at most N bytes of the answer, all
within one total deadline.

httpx's timeouts are per phase (connect, each read), so a receiver trickling one byte a
second would never trip them: the whole exchange runs under a trio deadline instead
(``webhooks.timeout_seconds``). The body is read raw (``Accept-Encoding: identity``, no
decompression, so a small compressed answer cannot expand in memory) and only up to the
cap; the rest is never read. Redirects are answers like any other 3xx: not followed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import trio

from daemon.webhooks.schedule import parse_retry_after
from daemon.webhooks.ssrf import TargetRefused


@dataclass(frozen=True)
class Exchange:
    status_code: int | None
    error: str | None
    body: str | None
    truncated: bool
    address: str | None
    duration_ms: int
    retry_after: float | None = None
    timed_out: bool = False
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    total_seconds: float,
    max_body: int,
) -> Exchange:
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    address: str | None = None
    retry_after: float | None = None
    refused = timed_out = truncated = False
    chunks: list[bytes] = []
    with trio.move_on_after(total_seconds) as scope:
        try:
            async with client.stream(
                "POST",
                url,
                content=body,
                headers={
                    **headers,
                    "content-type": "application/json",
                    "accept-encoding": "identity",
                },
            ) as response:
                status = response.status_code
                address = _peer(response)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                size = 0
                try:
                    async for chunk in response.aiter_raw():
                        if truncated:
                            continue
                        room = max_body - size
                        if len(chunk) > room:
                            chunks.append(chunk[:room])
                            truncated = True
                            # Enough: close the connection under the reader, so the next
                            # read fails through httpcore's nested generators and ends
                            # them (a plain ``break`` leaves them to the GC, unfinished).
                            await _close_stream(response)
                            continue
                        chunks.append(chunk)
                        size += len(chunk)
                except httpx.HTTPError:
                    if not truncated:
                        raise
        except TargetRefused as exc:
            refused, error = True, f"refused: {exc}"
        except httpx.TimeoutException as exc:
            timed_out, error = True, f"timeout: {type(exc).__name__}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if scope.cancelled_caught:
        if status is None:
            timed_out = True
            error = f"timeout: no answer within {total_seconds:g} s"
        else:
            truncated = True
            error = f"answer body not complete within {total_seconds:g} s"
    text = None
    if status is not None:
        # PostgreSQL text holds no NUL: an answer with one would fail the attempt's record
        # (and retry the delivery every lease) instead of being logged.
        text = b"".join(chunks).decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    if error is not None:
        error = error.replace("\x00", "\ufffd")
    return Exchange(
        status,
        error,
        text,
        truncated,
        address,
        int((time.monotonic() - started) * 1000),
        retry_after,
        timed_out,
        refused,
    )


async def _close_stream(response: httpx.Response) -> None:
    stream = response.extensions.get("network_stream")
    if stream is not None:
        await stream.aclose()


def _peer(response: httpx.Response) -> str | None:
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    try:
        peer = stream.get_extra_info("server_addr")
    except Exception:  # a backend without it: the log just lacks the address
        return None
    if isinstance(peer, tuple) and peer:
        return f"{peer[0]}:{peer[1]}" if len(peer) > 1 else str(peer[0])
    return None
