"""Schemathesis fuzzes the real server from its own ``/openapi.json``.

Generated valid and invalid requests for every documented operation (the live event
stream excepted: it never ends) must get an answer the document describes: the declared
statuses, media types and shapes, never a 5xx. The CLI runs in a subprocess (it is
synchronous) against the ingress actor serving from this test's trio loop.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from daemon.platform.config import PaymentsConfig
from daemon.platform.db import Database
from daemon.platform.deps import Deps
from tests.http_fixtures import (
    ADMIN_TOKEN,
    WEBHOOK_TOKEN,
    deps_fixture,  # noqa: F401 (the "deps" fixture)
    serving,
)
from tests.test_http_admin import add_task

CONFIG = """
[generation]
max-examples = {examples}
database = "none"

[[operations]]
include-path = "/webhooks/uisp/{{token}}"
parameters = {{ token = "{token}" }}

[[operations]]
include-path-regex = "^/api/v1/tasks/[{{]task_id[}}]"
parameters = {{ task_id = {task_id} }}
"""

# Every check schemathesis 4.32 has but object_level_authorization (it needs two users),
# named rather than "all" so a new release's new check is a deliberate addition here.
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "positive_data_acceptance",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
        "use_after_free",
        "ensure_resource_availability",
        "ignored_auth",
    ]
)


def schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return found


@pytest.mark.slow
async def test_schemathesis_finds_nothing(deps: Deps, db: Database, tmp_path: Path) -> None:
    cli = schemathesis()
    config = tmp_path / "schemathesis.toml"
    # A task to find (and retry), and a daemon that is ready: a 503 from /readyz is
    # documented, but schemathesis counts every 5xx as a server error.
    task_id = await add_task(db, "svc-1")
    deps.health.set_state("http_ingress", "running")
    # A payments API with a provider (the mock): with "none" a valid create is a 503.
    deps.config = deps.config.replace(payments=PaymentsConfig(provider="mock"))
    config.write_text(CONFIG.format(examples=25, token=WEBHOOK_TOKEN, task_id=task_id))
    with trio.fail_after(240):
        async with serving(deps) as client:
            base = str(client.base_url)
            document = (await client.get("/openapi.json")).json()
            result = await trio.run_process(
                [
                    cli,
                    "--config-file",
                    str(config),
                    "run",
                    f"{base}/openapi.json",
                    "--checks",
                    CHECKS,
                    "--header",
                    f"Authorization: Bearer {ADMIN_TOKEN}",
                    "--exclude-path",
                    "/api/v1/events",
                    "--workers",
                    "1",
                    "--seed",
                    "1",
                    "--no-color",
                    "--request-timeout",
                    "15",
                ],
                capture_stdout=True,
                stderr=subprocess.STDOUT,
                check=False,
                cwd=tmp_path,
            )
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output[-6000:]
    # It really ran every operation but the stream (an empty run also exits 0).
    operations = sum(len(item) for item in document["paths"].values()) - 1
    assert re.search(rf"Tested: {operations}\b", output), output[-3000:]
    assert re.search(r"(\d+) generated, \1 passed", output), output[-3000:]
