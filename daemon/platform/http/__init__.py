"""The HTTP side of paymentd: one Quart (trio) app served by the ``http_ingress`` actor.

``create_app(deps)`` builds it; ``daemon.actors.http_ingress.run`` serves it with hypercorn.
"""

from daemon.platform.http import hypercorn_fixes
from daemon.platform.http.app import create_app

hypercorn_fixes.apply()

__all__ = ["create_app"]
