# SPDX-License-Identifier: AGPL-3.0-or-later
"""The Grafana dashboard and the alert rules query only metrics the coordinator and peers really export.

The metric names come from the real registries, built in-process: coordinator.metrics.CoordinatorMetrics
fed a real status snapshot (coordinator.status.build_snapshot of the shipped CPU demo run) and
peer.metrics.PeerMetrics with every metric given a value (tests/helpers/deploy_peer_metrics.py), read back by
parsing their /metrics text; counter and histogram suffixes (_total, _bucket, _sum, _count) included.
"""

from __future__ import annotations

import importlib.util
import json
import re
from functools import cache

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.metrics import CoordinatorMetrics
from coordinator.planning import plan_from_config
from coordinator.state import initial_state
from coordinator.status import RunInfo, build_snapshot
from coordinator.storage import MetricsRow
from lila_net.config import load_run_config
from tests.helpers.coordinator_service import core_config
from tests.helpers.paths import REPO

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "lila.json"
GRID_COLUMNS = 24
# Labels Prometheus or the coordinator's service discovery put on every scraped series.
TARGET_LABELS = {"job", "instance", "peer_id", "peer_name"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "and",
    "or",
    "unless",
    "bool",
}
METRIC_RE = re.compile(r"\blila_[a-z0-9_]+\b")
SELECTOR_RE = re.compile(r"\b(lila_[a-z0-9_]+)\{([^}]*)\}")
MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")


def _peer_script():
    spec = importlib.util.spec_from_file_location(
        "deploy_peer_metrics", REPO / "tests" / "helpers" / "deploy_peer_metrics.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def exported() -> dict[str, set[str]]:
    """Every series name the coordinator and a peer expose, mapped to its label names."""
    config = load_run_config(REPO / "runs" / "cpu-demo.toml")
    history = [
        MetricsRow(
            at=1.0, peer_id="p-1", outer_step=1, global_tokens=1000, loss=4.5, val_bpb=1.9, tokens_per_s=100.0
        )
    ]
    snapshot = build_snapshot(
        initial_state(plan_from_config(config), core_config()),
        history,
        run=RunInfo(config.run.name, config.model.preset),
        now=2.0,
        tokens_per_s=50.0,
    )
    coordinator = CoordinatorMetrics()
    coordinator.set_snapshot(snapshot)
    coordinator.observe_rpc("Join", "OK", 0.01)
    texts = [coordinator.render(), generate_latest(_peer_script().populated_metrics().registry)]
    names: dict[str, set[str]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
    return names


def _dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every query in the dashboard: panel targets and template variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (f"panel {p['title']!r}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])
    ]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            queries.append((f"variable {var['name']}", var["query"]["query"]))
    return queries


def _alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_registries_export_the_expected_families():
    names = exported()
    for expected in (
        "lila_peers",
        "lila_tokens_total",
        "lila_loss",
        "lila_val_bpb",
        "lila_rpc_latency_seconds_bucket",
        "lila_peer_tokens_total",
        "lila_peer_round_duration_seconds_sum",
        "lila_peer_layer_stable_rank",
        "lila_peer_layer_condition_number",
        "lila_peer_rounds_total",
    ):
        assert expected in names
    assert names["lila_peer_layer_stable_rank"] == {"layer"}
    assert names["lila_peers"] == {"state"}


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_queried_metric_is_exported(source):
    queries = _dashboard_queries() if source == "dashboard" else _alert_queries()
    names = exported()
    used = set()
    for where, expr in queries:
        for metric in METRIC_RE.findall(expr):
            assert metric in names, (
                f"{where} queries {metric}, which neither the coordinator nor a peer exports"
            )
            used.add(metric)
    assert used, f"the {source} queries no lila_* metric"


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_label_matcher_names_a_real_label(source):
    queries = _dashboard_queries() if source == "dashboard" else _alert_queries()
    names = exported()
    for where, expr in queries:
        for metric, matchers in SELECTOR_RE.findall(expr):
            for label, _op in MATCHER_RE.findall(matchers):
                assert label in names[metric] | TARGET_LABELS | {"le"}, (
                    f"{where}: {metric} has no label {label!r}"
                )
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in filter(None, (x.strip() for x in grouping.split(","))):
                metrics = METRIC_RE.findall(expr)
                known = set().union(*(names[m] for m in metrics)) | TARGET_LABELS | {"le"}
                assert label in known and label not in PROMQL_WORDS, (
                    f"{where}: groups by unknown label {label!r}"
                )


def test_dashboard_covers_what_the_issue_asks_for():
    queries = " ".join(expr for _, expr in _dashboard_queries())
    for metric in (
        "lila_tokens_per_second",
        "lila_peer_tokens_per_second",
        "lila_loss",
        "lila_val_bpb",
        "lila_peer_val_bpb",
        "lila_peers",
        "lila_peer_bytes_sent_total",
        "lila_peer_bytes_received_total",
        "lila_peer_round_duration_seconds_bucket",
        "lila_peer_layer_stable_rank",
        "lila_peer_layer_condition_number",
    ):
        assert metric in queries, f"the dashboard shows no {metric}"


def test_dashboard_is_well_formed_for_grafana():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "lila-network" and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus():
    prov = DEPLOY / "grafana" / "provisioning"
    datasource = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    dashboard = json.loads(DASHBOARD.read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert variable["current"]["value"] == datasource["uid"] and datasource["type"] == "prometheus"
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert datasource["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]
    provider = yaml.safe_load((prov / "dashboards" / "lila.yml").read_text())["providers"][0]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = dict(m.split(":")[:2] for m in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert datasource["url"] == "http://prometheus:9090"
