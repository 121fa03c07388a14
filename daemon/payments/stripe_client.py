"""The stripe-python client paymentd uses: async methods on httpx, under trio.

stripe-python's ``HTTPXClient`` runs on anyio, so its ``*_async`` methods (and its retry
sleeps, ``anyio.sleep``) work inside trio tasks without the asyncio bridge. Two things
are adjusted here:

- the encoded form goes to httpx as ``content=`` (the SDK passes the bytes as ``data=``,
  which httpx 0.28 deprecates with a warning on every request);
- the ``stripe`` logger is held at WARNING whatever the daemon's level: at DEBUG the SDK
  logs every request's form and every response body, and those carry client secrets and
  customer data. (It never logs the API key: that is only in the Authorization header.
  ``STRIPE_LOG=debug`` in the environment makes the SDK *print* the same to stderr,
  past our redaction; don't set it on a daemon.)

The SDK's own retries are off (``max_network_retries=0``): the payment processor owns
retries, each with the same idempotency key, and a lease held meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import stripe

# The SDK's logger: requests, responses and retries; see the module docstring.
logging.getLogger("stripe").setLevel(logging.WARNING)


class TrioHttpxClient(stripe.HTTPXClient):
    """``stripe.HTTPXClient`` passing the request body as ``content=``."""

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> Any:
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        data = kwargs.pop("data", None)
        if data:  # bytes (the encoded form); empty for GET/DELETE
            kwargs["content"] = data
        return args, kwargs


@dataclass
class StripeApi:
    """A stripe-python client and the connection pool it owns (closed by ``aclose``)."""

    client: stripe.StripeClient
    http: TrioHttpxClient

    async def aclose(self) -> None:
        await self.http.close_async()  # type: ignore[no-untyped-call]


def open_api(api_key: str, base_url: str, *, timeout_seconds: float) -> StripeApi:
    """A client for the API at ``base_url`` (``https://api.stripe.com``, or a fake)."""
    http = TrioHttpxClient(timeout=timeout_seconds)
    client = stripe.StripeClient(
        api_key,
        http_client=http,
        base_addresses={"api": base_url},
        max_network_retries=0,
    )
    return StripeApi(client, http)
