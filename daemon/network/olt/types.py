"""Types shared by the OLT pool, the drivers and the rest of the daemon."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Vendor = Literal["huawei", "zte"]

_ONU_RE = re.compile(r"^\s*(\d+)/(\d+)/(\d+)[:/](\d+)\s*$")


@dataclass(frozen=True)
class OnuRef:
    """Where an ONU sits on an OLT: frame/slot/port plus the ONU id on that PON port."""

    frame: int
    slot: int
    port: int
    onu_id: int

    @classmethod
    def parse(cls, text: str) -> OnuRef:
        """Parse ``"0/1/3:12"`` (or ``"0/1/3/12"``)."""
        m = _ONU_RE.match(text)
        if m is None:
            raise ValueError(
                f"invalid ONU reference {text!r}: expected frame/slot/port:onu, e.g. '0/1/3:12'"
            )
        return cls(*(int(g) for g in m.groups()))

    def __str__(self) -> str:
        return f"{self.frame}/{self.slot}/{self.port}:{self.onu_id}"


@dataclass(frozen=True)
class OnuChange:
    """One ONU to switch within a batched CLI sequence (``OltDriver.set_onus``)."""

    onu: OnuRef
    enabled: bool

    @property
    def action(self) -> str:
        return "activate" if self.enabled else "deactivate"


@dataclass(frozen=True)
class DeviceSpec:
    """How to reach and log into one OLT. ``options`` holds vendor quirks (``zte_style``).

    ``host_key`` is the device's pinned SSH host key (an OpenSSH public key line);
    ``host_key_check=False`` is the operator's explicit opt-out. ``version`` is the device
    row's version, bumped by every change: the OLT pool compares specs to notice edits.
    """

    name: str
    vendor: Vendor
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    enable_password: str | None = field(default=None, repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)
    host_key: str | None = None
    host_key_check: bool = True
    version: int = 0


@dataclass(frozen=True)
class OltResult:
    """A confirmed change: ``state`` is what the device reported after the command."""

    device: str
    onu: OnuRef
    action: str
    state: str  # "active" | "deactivated"
    output: str  # excerpt (last ~2000 chars) of the operation's transcript
    seconds: float


class OltError(Exception):
    """Base class of everything the OLT layer raises on purpose."""


class OltUnknownDevice(OltError):
    """No device of that name is configured."""


class OltCommandError(OltError):
    """The device said no (unknown ONU, bad parameter): permanent, do not retry."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.output = output


class OltOnuNotFound(OltCommandError):
    """The device says the ONU is not there (``Failure: The ONT does not exist``, ZTE
    ``62397 The entry is not existed`` or no row for it): the mapping is wrong."""


class OltAuthError(OltCommandError):
    """The device rejected our credentials (SSH or in-CLI login): permanent until the
    device's settings change, so the task fails and the operator is told what to fix."""


def auth_error(device: str, detail: str) -> OltAuthError:
    """The authentication failure as the operator should read it: what to run to fix it."""
    return OltAuthError(
        f"{device}: authentication failed ({detail}); fix the credentials with "
        f"'paymentd olt update {device} --new-password' (or --password-file FILE, --username "
        "NAME); the device is not tried again until its settings change"
    )


class OltHostKeyError(OltCommandError):
    """The device's SSH host key is not the pinned one, or none is pinned: refused for
    good (a retry would only send the password to the same impostor)."""


class OltTransientError(OltError):
    """Connection refused or lost, timeout: worth retrying later."""


class OltTimeout(OltTransientError):
    """A step got no answer in time (connect, channel open, a read, a write): the session
    is wedged and dropped."""


class OltCircuitOpen(OltTransientError):
    """The device failed repeatedly; not trying it again until the breaker resets."""

    def __init__(self, message: str, retry_in: float | None = None) -> None:
        super().__init__(message)
        self.retry_in = retry_in  # seconds until the breaker lets a request through


class OltBusy(OltTransientError):
    """The device's request queue is full: try again shortly (not an attempt on the device)."""
