"""The operability pack: the alert rules pass ``promtool check rules`` and their unit
tests (``promtool test rules``); every alert has tests; the Grafana dashboard is a valid
import; and every metric and label the rules and the dashboard name is one the daemon's
real ``/metrics`` exports.

promtool and the Prometheus server come with Debian's ``prometheus`` package (``.ci/run``
installs it); without them those tests skip and say so, the metric checks still run. The
one with the real server takes ~6 s: Prometheus applies a new scrape target only on its
5-second reload tick, and that is the test's point (the rules load, a real scrape stores
the daemon's ``job`` label as ``exported_job``, every dashboard query runs).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from daemon.platform.deps import Deps
from daemon.platform.metrics import Metrics
from tests.http_fixtures import deps_fixture, serving  # noqa: F401 (the "deps" fixture)

OPS = Path(__file__).resolve().parent.parent / "ops"
RULES = OPS / "prometheus" / "paymentd.rules.yml"
RULE_TESTS = sorted((OPS / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = OPS / "grafana" / "paymentd.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's 'prometheus' package (.ci/run does)",
)
# Labels Prometheus adds to every scraped series; the daemon's own "job" label (a
# scheduled job's name) is stored as "exported_job" (honor_labels: false).
TARGET_LABELS = {"job", "instance"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in, as Grafana sends it."""
    expr = expr.replace("$__rate_interval", "1m").replace("$instance", ".+")
    return expr.replace("$job", "paymentd")


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    done = run_promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", *RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../paymentd.rules.yml"], path
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"


def test_every_alert_has_for_severity_and_a_runbook() -> None:
    for rule in alerts():
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key), (rule["alert"], key)


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    d = dashboard()
    assert d["schemaVersion"] >= 36 and d["uid"] == "paymentd"
    assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert {"job", "instance"} <= set(variables)
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    for wanted in ("Overview", "Queues", "Reconnection", "OLTs", "Webhooks", "Payments", "HTTP"):
        assert wanted in rows
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            # Every query is scoped by the template variables.
            assert 'job="$job"' in target["expr"] and "$instance" in target["expr"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # promtool has no "check this expression" command: recording rules are parsed alike.
    rules = [
        {"record": f"paymentd:dashboard_query_{n}", "expr": concrete(e)}
        for n, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run_promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


# What the daemon exports: series names -> label names.
Exported = dict[str, frozenset[str]]


async def exported(deps: Deps) -> Exported:
    """The families on a real /metrics, with the label names each one declares."""
    with trio.fail_after(20):
        async with serving(deps) as client:
            response = await client.get("/metrics")
    assert response.status_code == 200
    declared = {
        m._name: frozenset(m._labelnames)
        for m in vars(deps.metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    found: Exported = {}
    for family in text_string_to_metric_families(response.text):
        labels = declared.get(family.name, frozenset())
        for suffix in SUFFIXES.get(family.type, ("",)):
            extra = {"le"} if suffix == "_bucket" else set()
            found[family.name + suffix] = labels | extra
    return found


STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
SELECTOR = re.compile(r"(?<![\w$:])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
NAME = re.compile(r"(?<![\w$:])([a-zA-Z_:][\w:]*)\s*(\()?")
# PromQL's own words: binary operators, modifiers and aggregations (those are followed
# by "by (...)" rather than "(", so the function test alone misses them).
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan",
    "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The series names ``expr`` selects (functions, keywords, labels, ranges left out)."""
    bare = STRING.sub('""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = GROUPING.sub("", bare)
    return {name for name, call in NAME.findall(bare) if not call and name.lower() not in KEYWORDS}


def check_expr(expr: str, metrics: Exported) -> list[str]:
    """What ``expr`` names that the daemon does not export (empty when all is well)."""
    problems = []
    known = {**metrics, "up": frozenset()}
    names = metric_names(expr)
    for name in sorted(names - set(known)):
        problems.append(f"{name}: not exported")

    def allowed(name: str) -> frozenset[str]:
        own = known.get(name, frozenset())
        return own | TARGET_LABELS | ({"exported_job"} if "job" in own else set())

    bare = STRING.sub('""', expr)
    for name, matchers in SELECTOR.findall(bare):
        for label in MATCHER.findall(matchers):
            if label not in allowed(name):
                problems.append(f"{name}: no label {label}")
    in_scope = set().union(*(allowed(n) for n in names), {"le"})
    for group in GROUPING.findall(bare):
        for label in filter(None, (g.strip() for g in group.split(","))):
            if label not in in_scope:
                problems.append(f"grouping by {label}: no metric here has it")
    return problems


def template_selectors() -> list[str]:
    """The series selectors in the dashboard variables' ``label_values(...)`` queries."""
    found = []
    for variable in dashboard()["templating"]["list"]:
        found += re.findall(r"label_values\((\w+(?:\{[^}]*\})?)", variable["definition"])
    return found


async def test_rules_and_dashboard_name_only_exported_metrics_and_labels(deps: Deps) -> None:
    metrics = await exported(deps)
    assert "paymentd_queue_depth" in metrics and "paymentd_jobs_total" in metrics
    exprs = [rule["expr"] for rule in alerts()] + dashboard_exprs() + template_selectors()
    assert len(alerts()) >= 20 and len(dashboard_exprs()) >= 40
    problems = [f"{problem} in {e}" for e in exprs for problem in check_expr(e, metrics)]
    assert problems == []


def test_the_name_check_catches_a_wrong_name_or_label() -> None:
    metrics = {
        "paymentd_queue_depth": frozenset({"queue"}),
        "paymentd_job_runs_total": frozenset({"job", "outcome"}),
    }
    assert check_expr('max by (queue) (paymentd_queue_depth{queue="sms"}) > 5', metrics) == []
    assert check_expr('sum by (exported_job) (paymentd_job_runs_total{job="x"})', metrics) == []
    assert check_expr("count(up == 0) or vector(0)", metrics) == []
    assert check_expr("rate(paymentd_queue_dept[5m])", metrics) == [
        "paymentd_queue_dept: not exported"
    ]
    assert check_expr('paymentd_queue_depth{queu="sms"}', metrics) == [
        "paymentd_queue_depth: no label queu"
    ]
    assert check_expr("sum by (device) (paymentd_queue_depth)", metrics) == [
        "grouping by device: no metric here has it"
    ]


def test_metrics_objects_are_what_the_check_reads() -> None:
    # The label check reads prometheus_client's _name/_labelnames: fail loudly if it moves.
    m = Metrics()
    assert m.queue_depth._name == "paymentd_queue_depth"
    assert m.queue_depth._labelnames == ("queue",)


PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not found: install Debian's 'prometheus' package (.ci/run does)",
)
async def test_a_real_prometheus_loads_the_rules_and_runs_the_dashboard_on_a_scrape(
    deps: Deps, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None
    deps.metrics.declared_jobs.add("retention")
    deps.metrics.job_runs.labels("retention", "ok").inc()
    deps.metrics.actor_up.labels("http_ingress").set(1)
    port = free_port()
    with trio.fail_after(30):
        async with serving(deps) as daemon:
            target = daemon.base_url.netloc.decode()
            config = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "paymentd",
                        "static_configs": [{"targets": [target]}],
                    }
                ],
            }
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
            argv = [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ]
            with (tmp_path / "prometheus.log").open("wb") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
            try:
                base = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(base_url=base, timeout=5) as prom:
                    rules = await _evaluated_rules(prom)
                    series = await _query(prom, "paymentd_job_runs_total")
                    results = {e: await _query(prom, concrete(e)) for e in dashboard_exprs()}
                    alerting = await _alerts_after_a_few_evaluations(prom)
            finally:
                proc.kill()  # its data is thrown away: no need to wait for a clean flush
                await trio.to_thread.run_sync(proc.wait)
    assert {r["name"] for r in rules} == {rule["alert"] for rule in alerts()}
    assert [r for r in rules if r["health"] != "ok"] == []
    assert alerting == []  # an idle, healthy daemon alerts nothing, not even pending
    # The daemon's job label lands as exported_job, as the rules and dashboard assume.
    assert series[0]["metric"]["exported_job"] == "retention"
    assert series[0]["metric"]["job"] == "paymentd"
    # Every dashboard query ran (_query checks each succeeded); those over what this
    # scrape had show it, with the labels their legends name.
    [up] = next(r for e, r in results.items() if e.startswith("min(up{"))
    assert up["value"][1] == "1"
    [actor] = next(r for e, r in results.items() if e.startswith("paymentd_actor_up{"))
    assert actor["metric"]["actor"] == "http_ingress" and actor["value"][1] == "1"


async def _query(prom: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    response = await prom.get("/api/v1/query", params={"query": expr})
    body = response.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def _alerts_after_a_few_evaluations(prom: httpx.AsyncClient) -> list[dict[str, Any]]:
    # PaymentdAbsent is pending from Prometheus' start until its first scrape, and stays
    # so until the next evaluation of its group: give it a few (1 s apart).
    alerting: list[dict[str, Any]] = []
    with trio.move_on_after(3):
        while alerting := (await prom.get("/api/v1/alerts")).json()["data"]["alerts"]:  # noqa: ASYNC110
            await trio.sleep(0.2)
    return alerting


async def _evaluated_rules(prom: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The alert rules once each has been evaluated after a scrape (health not unknown)."""
    while True:
        try:
            response = await prom.get("/api/v1/rules")
            if response.status_code == 200 and await _query(prom, "paymentd_job_runs_total"):
                groups = response.json()["data"]["groups"]
                rules: list[dict[str, Any]] = [r for g in groups for r in g["rules"]]
                if rules and all(r["health"] != "unknown" for r in rules):
                    return rules
        except httpx.TransportError:
            pass  # not listening yet
        await trio.sleep(0.1)
