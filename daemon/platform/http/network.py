"""Admin route for drift reconciliation: ``GET /api/v1/network/drift``.

The latest finished run (``daemon/network/drift.py``) and its drift rows, one per service
that disagrees, each with its kind; ``?kind=`` narrows the list. Admin scope.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field
from quart import Blueprint
from quart_schema import validate_querystring, validate_response

from daemon.network import drift_store
from daemon.network.drift_store import DriftItem, DriftRun
from daemon.platform import auth
from daemon.platform.deps import Deps
from daemon.platform.http import schema
from daemon.platform.http.admin import AUTH_PROBLEMS, Shape


class DriftQuery(Shape):
    model_config = ConfigDict(extra="forbid")

    kind: drift_store.Kind | None = Field(None, description="only drift of this kind")


class DriftList(Shape):
    run: DriftRun | None = Field(description="the latest finished run; null before the first")
    counts: dict[str, int] = Field(description="drift rows of that run per kind (all kinds)")
    drift: list[DriftItem]


def blueprint(deps: Deps) -> Blueprint:
    bp = Blueprint("network", __name__, url_prefix="/api/v1")
    auth.Guard(deps).protect(bp, auth.ADMIN)

    @bp.get("/network/drift")
    @schema.declare(responses={400: schema.ProblemDocument, **AUTH_PROBLEMS})
    @validate_querystring(DriftQuery)
    @validate_response(DriftList)
    async def list_drift(query_args: DriftQuery) -> dict[str, Any]:
        """Where UISP, the task log and the OLTs disagreed at the latest drift run."""
        found = await drift_store.latest(deps.db)
        counts = {kind: 0 for kind in drift_store.KINDS}
        if found is None:
            return {"run": None, "counts": counts, "drift": []}
        run, items = found
        for item in items:
            counts[item.kind] = counts.get(item.kind, 0) + 1
        if query_args.kind is not None:
            items = [i for i in items if i.kind == query_args.kind]
        return {"run": run, "counts": counts, "drift": items}

    return bp
