"""OLT access: SSH transport, vendor CLI drivers, and a simulator for tests and the demo.

``types`` holds what the rest of the daemon imports; ``ssh`` is the only client-side
module touching asyncssh; ``driver``/``huawei``/``zte`` speak the vendor CLIs over a
plain-trio ``CliSession``; ``simulator`` is an asyncssh server speaking both CLIs.
"""

from daemon.network.olt.types import (
    DeviceSpec,
    OltAuthError,
    OltCircuitOpen,
    OltCommandError,
    OltError,
    OltHostKeyError,
    OltOnuNotFound,
    OltResult,
    OltTimeout,
    OltTransientError,
    OltUnknownDevice,
    OnuRef,
)

__all__ = [
    "DeviceSpec",
    "OltAuthError",
    "OltCircuitOpen",
    "OltCommandError",
    "OltError",
    "OltHostKeyError",
    "OltOnuNotFound",
    "OltResult",
    "OltTimeout",
    "OltTransientError",
    "OltUnknownDevice",
    "OnuRef",
]
