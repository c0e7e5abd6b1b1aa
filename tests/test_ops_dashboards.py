"""The Grafana dashboard and the Prometheus rules in etc/ against a running server's /metrics.

Every metric name that a panel, a dashboard variable or an alert rule uses must be one that
``twistd -n replayserver`` exposes, in one process and with worker processes (the main process
then merges the workers' metrics). ``promtool check rules`` (Debian package ``prometheus``)
must accept the rules file when promtool is installed.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.server import REPO_ROOT, ServerProcess

DASHBOARD = REPO_ROOT / "etc" / "grafana" / "replayserver.json"
RULES = REPO_ROOT / "etc" / "prometheus" / "replayserver-rules.yml"

HTTP_LISTENING = re.compile(r"HTTP listener on IPv4Address\(.*port=(\d+)\)")
#: A metric name in a PromQL expression: an identifier starting with ``replayserver_``.
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])replayserver_[A-Za-z0-9_:]*")
#: ``# TYPE <name> <type>`` lines of the text exposition format.
TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
#: The name at the start of a sample line.
SAMPLE_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{| )", re.MULTILINE)

#: What an operator looks at: the dashboard shows each of these.
ON_THE_DASHBOARD = {
    "replayserver_active_connections_count",
    "replayserver_running_replays_count",
    "replayserver_saved_replay_files_total",
    "replayserver_failed_saves_total",
    "replayserver_pending_saves_count",
    "replayserver_save_duration_seconds_bucket",
    "replayserver_reader_lag_bytes",
    "replayserver_diverged_streams_total",
    "replayserver_refused_connections_total",
    "replayserver_limited_connections_total",
    "replayserver_received_bytes_total",
    "replayserver_sent_bytes_total",
    "replayserver_served_connections_total",
    "replayserver_reactor_stall_seconds",
}
def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, those inside (collapsed) rows included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def dashboard_expressions() -> list[str]:
    """The PromQL of every panel target and of every query variable."""
    board = dashboard()
    expressions = [target["expr"] for panel in panels(board["panels"])
                   for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            expressions.append(query["query"] if isinstance(query, dict) else query)
    return expressions


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def names_in(expressions: list[str]) -> set[str]:
    return {name for expression in expressions for name in METRIC_NAME.findall(expression)}


def exposed_names(exposition: str) -> set[str]:
    """The series names a scrape of ``exposition`` gives, counting the families declared by a
    ``# TYPE`` line that have no sample yet (labelled counters nothing has touched)."""
    names = set(SAMPLE_LINE.findall(exposition))
    for name, kind in TYPE_LINE.findall(exposition):
        if kind == "counter":
            names.add(name.removesuffix("_total") + "_total")
        elif kind in ("histogram", "summary"):
            names.update({name, f"{name}_sum", f"{name}_count"})
            if kind == "histogram":
                names.add(f"{name}_bucket")
        else:
            names.add(name)
    return names


@pytest.fixture(scope="module", params=["1", "2"], ids=["one process", "two workers"])
def exposed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The metric names of a fresh server's /metrics (``server.workers`` = the param)."""
    server = ServerProcess(
        tmp_path_factory.mktemp("ops-dashboards"),
        {"server": {"http_listen": "tcp:0:interface=127.0.0.1"}},
        environment={"REPLAYSERVER_SERVER_WORKERS": request.param},
    ).start()
    try:
        listening = HTTP_LISTENING.search(server.log())
        assert listening is not None, server.log()
        port = int(listening.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            return exposed_names(response.read().decode())
    finally:
        server.terminate()


def test_names_are_found_in_promql() -> None:
    expression = ('histogram_quantile(0.9, sum by (le) (rate('
                  'replayserver_save_duration_seconds_bucket{job="replayserver"}[5m])))'
                  ' / on(instance) up and replayserver_x:rate5m')
    assert names_in([expression]) == {"replayserver_save_duration_seconds_bucket",
                                      "replayserver_x:rate5m"}


def test_exposed_names_include_families_without_samples() -> None:
    exposition = (
        "# TYPE replayserver_failed_saves_total counter\n"
        "# TYPE replayserver_save_duration_seconds histogram\n"
        'replayserver_save_duration_seconds_bucket{le="+Inf"} 0.0\n'
        "# TYPE replayserver_running_replays_count gauge\n"
        "replayserver_running_replays_count 3.0\n"
    )
    assert exposed_names(exposition) == {
        "replayserver_failed_saves_total",
        "replayserver_save_duration_seconds",
        "replayserver_save_duration_seconds_bucket",
        "replayserver_save_duration_seconds_sum",
        "replayserver_save_duration_seconds_count",
        "replayserver_running_replays_count",
    }


def test_every_dashboard_metric_is_exposed(exposed: set[str]) -> None:
    assert names_in(dashboard_expressions()) - exposed == set()


def test_every_rule_metric_is_exposed(exposed: set[str]) -> None:
    assert names_in([rule["expr"] for rule in rules()]) - exposed == set()


def test_the_dashboard_shows_what_operators_look_at() -> None:
    assert ON_THE_DASHBOARD - names_in(dashboard_expressions()) == set()


def test_dashboard_is_importable() -> None:
    """Unique panel ids, a templated Prometheus data source on every query, no overlap."""
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    every = list(panels(board["panels"]))
    assert len({panel["id"] for panel in every}) == len(every)
    cells: set[tuple[int, int]] = set()
    for panel in every:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        for x in range(position["x"], position["x"] + position["w"]):
            for y in range(position["y"], position["y"] + position["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["expr"].strip(), panel["title"]


def test_every_rule_tells_the_operator_what_to_do() -> None:
    every = rules()
    assert {rule["alert"] for rule in every} >= {
        "ReplayServerDown", "ReplayServerSavesPending", "ReplayServerSavesFailing",
        "ReplayServerNoSavesWhileBusy",
    }
    for rule in every:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 100, rule["alert"]


def promtool_check_rules(path: Path) -> None:
    result = subprocess.run(["promtool", "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


without_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package prometheus)",
)


@without_promtool
def test_promtool_accepts_the_rules() -> None:
    promtool_check_rules(RULES)


@without_promtool
def test_promtool_parses_the_dashboard_queries(tmp_path: Path) -> None:
    """Each panel query, its Grafana variables given values, as a recording rule."""
    values = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*"}
    queries: list[dict[str, str]] = []
    for panel in panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            query = target["expr"]
            for variable, value in values.items():
                query = query.replace(variable, value)
            queries.append({"record": f"dashboard:query_{len(queries)}", "expr": query})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}))
    promtool_check_rules(path)
