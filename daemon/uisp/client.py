"""UISP CRM REST client (``/crm/api/v1.0``, header ``X-Auth-App-Key``) and entity helpers.

The client is a thin async wrapper over ``httpx.AsyncClient`` (native on trio). It returns
the API's JSON as plain dicts/lists and maps failures onto three kinds callers act on:

- ``UispAuthError`` (401/403): the app key is wrong or read-only — a configuration
  problem, retrying will not help;
- ``UispTransientError`` (network errors, timeouts, 429, 5xx): retry later;
- ``UispNotFound`` (404 where the entity should exist) and plain ``UispError`` (other
  unexpected answers): permanent for this message.

The pure helpers (``service_onu``, ``client_phone``, ``client_name``) read the entity shapes
documented in reference/uisp.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from daemon.platform.config import UispConfig

__all__ = [
    "SERVICE_ACTIVE",
    "SERVICE_SUSPENDED",
    "UispAuthError",
    "UispClient",
    "UispError",
    "UispNotFound",
    "UispTransientError",
    "client_name",
    "client_phone",
    "service_onu",
]

SERVICE_ACTIVE = 1
SERVICE_SUSPENDED = 3

JSON = Any  # what the API returns: dicts and lists of dicts
Params = list[tuple[str, str | int | float | bool | None]]


class UispError(Exception):
    """An unexpected answer from UISP (permanent for the message being handled)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UispNotFound(UispError):
    """404 where the entity was expected to exist."""


class UispAuthError(UispError):
    """401/403: the app key is missing, wrong, or lacks write permission."""


class UispTransientError(UispError):
    """Network error, timeout, 429 or 5xx: worth retrying later."""


class UispClient:
    """One HTTP connection pool to one UISP CRM instance. Close it with ``aclose()``."""

    def __init__(
        self,
        base_url: str,
        app_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"X-Auth-App-Key": app_key, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def from_config(cls, cfg: UispConfig) -> UispClient:
        return cls(cfg.base_url, cfg.app_key.reveal(), timeout=cfg.timeout_seconds)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> UispClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: JSON = None,
        ok_statuses: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        """Send one request; return it if its status is in ``ok_statuses``, else raise."""
        try:
            resp = await self._http.request(method, path, params=params, json=json)
        except httpx.TimeoutException as exc:
            raise UispTransientError(f"UISP {method} {path}: timed out ({exc!r})") from exc
        except httpx.TransportError as exc:
            raise UispTransientError(f"UISP {method} {path}: {exc!r}") from exc
        status = resp.status_code
        if status in ok_statuses:
            return resp
        detail = f"UISP {method} {path}: HTTP {status} {resp.text[:200]!r}"
        if status in (401, 403):
            raise UispAuthError(detail, status)
        if status == 429 or status >= 500:
            raise UispTransientError(detail, status)
        if status == 404:
            raise UispNotFound(detail, status)
        raise UispError(detail, status)

    async def _get_json(self, path: str, params: Params | None = None) -> JSON:
        return _json(await self._request("GET", path, params=params))

    async def get_webhook_event(self, uuid: str) -> dict[str, Any] | None:
        """The event UISP recorded under ``uuid``, or None if UISP never sent it (404)."""
        resp = await self._request("GET", f"/webhook-events/{uuid}", ok_statuses=(200, 404))
        if resp.status_code == 404:
            return None
        event: dict[str, Any] = _json(resp)
        return event

    async def get_client(self, client_id: int) -> dict[str, Any]:
        client: dict[str, Any] = await self._get_json(f"/clients/{int(client_id)}")
        return client

    async def get_client_services(
        self, client_id: int, statuses: list[int] | None = None
    ) -> list[dict[str, Any]]:
        params: Params = [("clientId", int(client_id))]
        params += [("statuses[]", int(s)) for s in statuses or ()]
        services: list[dict[str, Any]] = await self._get_json("/clients/services", params)
        return services

    async def iter_services(
        self, statuses: list[int] | None = None, *, page_size: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every service, one page at a time: ``GET /clients/services?limit=&offset=``.

        UISP answers a plain JSON array per page (no total, no next link), so a page
        shorter than ``limit`` is the last one.
        """
        offset = 0
        while True:
            params: Params = [("limit", int(page_size)), ("offset", offset)]
            params += [("statuses[]", int(s)) for s in statuses or ()]
            page: list[dict[str, Any]] = await self._get_json("/clients/services", params)
            if not isinstance(page, list):
                raise UispError(f"UISP GET /clients/services: expected a list, got {page!r:.80}")
            if page:
                yield page
            if len(page) < page_size:
                return
            offset += len(page)

    async def list_services(self, *, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """A page of every client's services (``limit``/``offset``, oldest first)."""
        params: Params = [("limit", int(limit)), ("offset", int(offset))]
        services: list[dict[str, Any]] = await self._get_json("/clients/services", params)
        return services

    async def get_service(self, service_id: int) -> dict[str, Any]:
        service: dict[str, Any] = await self._get_json(f"/clients/services/{int(service_id)}")
        return service

    async def get_payment(self, payment_id: int) -> dict[str, Any]:
        payment: dict[str, Any] = await self._get_json(f"/payments/{int(payment_id)}")
        return payment

    async def find_payment(
        self, client_id: int, provider_payment_id: str, *, page_size: int = 100
    ) -> dict[str, Any] | None:
        """The client's UISP payment recorded with ``providerPaymentId``, or None.

        Paged (``limit``/``offset``, like ``iter_services``): a client with years of
        payments must not hide ours past a first page, or we would record it twice.
        """
        offset = 0
        while True:
            params: Params = [
                ("clientId", int(client_id)),
                ("limit", int(page_size)),
                ("offset", offset),
            ]
            page: list[dict[str, Any]] = await self._get_json("/payments", params)
            if not isinstance(page, list):
                raise UispError(f"UISP GET /payments: expected a list, got {page!r:.80}")
            for payment in page:
                if payment.get("providerPaymentId") == provider_payment_id:
                    return payment
            if len(page) < page_size:
                return None
            offset += len(page)

    async def create_payment(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /payments``: record a payment made elsewhere (UISP then settles the
        client's invoices, unsuspends and sends its webhooks, as for an office payment)."""
        payment: dict[str, Any] = _json(
            await self._request("POST", "/payments", json=body, ok_statuses=(200, 201))
        )
        return payment

    async def cancel_suspend(self, service_id: int) -> bool:
        """Cancel a service's suspension. True if done; False if there was nothing to cancel.

        UISP answers 404 for an unknown service and 422 for one that is not suspended;
        either way the caller's goal (service not suspended by us) needs no more work.
        """
        resp = await self._request(
            "PATCH",
            f"/clients/services/{int(service_id)}/cancel-suspend",
            ok_statuses=(200, 404, 422),
        )
        return resp.status_code == 200


def _json(resp: httpx.Response) -> JSON:
    try:
        return resp.json()
    except ValueError as exc:
        # A 200 with HTML usually means base_url points at the web UI, not /crm/api/v1.0.
        raise UispError(
            f"UISP {resp.request.method} {resp.request.url.path}: not JSON "
            f"({resp.headers.get('content-type', '?')}): {resp.text[:120]!r}",
            resp.status_code,
        ) from exc


def _attribute(service: dict[str, Any], wanted: str) -> str | None:
    """A custom attribute's value, matched by ``key`` (UISP's slug), ``name`` or id."""
    for attr in service.get("attributes") or ():
        if not isinstance(attr, dict):
            continue
        names = (attr.get("key"), attr.get("name"), attr.get("customAttributeId"))
        if any(n is not None and str(n) == wanted for n in names):
            value = attr.get("value")
            if value is not None and str(value).strip():
                return str(value).strip()
    return None


def service_onu(
    service: dict[str, Any], olt_attribute: str, onu_attribute: str
) -> tuple[str, str] | None:
    """``(olt_name, onu_location)`` from the service's custom attributes, or None if unset.

    UISP's API gives each attribute as ``{"customAttributeId", "name", "key", "value"}``;
    operators configure either the key (e.g. ``oltName``) or the display name, so both are
    accepted, as is the numeric custom attribute id.
    """
    olt = _attribute(service, olt_attribute)
    onu = _attribute(service, onu_attribute)
    if olt is None or onu is None:
        return None
    return olt, onu


def client_phone(client: dict[str, Any]) -> str | None:
    """The number to text: a billing contact's phone, else a general contact's, else any."""
    contacts = [c for c in client.get("contacts") or () if isinstance(c, dict)]
    with_phone = [c for c in contacts if str(c.get("phone") or "").strip()]
    for flag in ("isBilling", "isContact", None):
        for contact in with_phone:
            if flag is None or contact.get(flag):
                return str(contact["phone"]).strip()
    return None


def client_name(client: dict[str, Any]) -> str:
    """How to address the client: first + last name, else the company name, else ''."""
    company = str(client.get("companyName") or "").strip()
    # clientType 2 is a company: its contact person's name is not who we write to.
    if client.get("clientType") == 2 and company:
        return company
    person = " ".join(
        str(client.get(k) or "").strip() for k in ("firstName", "lastName") if client.get(k)
    ).strip()
    return person or company
