"""The agent's predictions, errors and drift events in a real InfluxDB, and the Grafana
dashboards of deploy/compose/grafana/dashboards/ that show them (issue 13, "See it").

A real agent (simulated plant 1, a drift in its Cu supply) runs against a real Mosquitto
and a real influxd; what it published over MQTT must be what InfluxDB holds. Then every
dashboard is checked as Grafana would use it: its data sources are the provisioned ones,
its variables are defined, its Prometheus metrics are exported (``unknown_metrics``) and
its PromQL parses (``promtool``), and each InfluxQL query runs on that influxd without an
error and, for this agent's data, with results."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from alchimia.agent.learn.outcomes import (
    DRIFT_MEASUREMENT,
    ERROR_MEASUREMENT,
    PREDICTION_MEASUREMENT,
)
from alchimia.agent.settings import AgentSettings
from alchimia.broker.schemas import PredictionBody, decode
from alchimia.broker.topics import Topics
from alchimia.local import AgentThread
from alchimia.models.schema import TARGETS
from alchimia.models.spec import ModelSpec
from tests.data.models import first_model
from tests.fixtures.influxd import InfluxdServer
from tests.fixtures.mosquitto import Mosquitto
from tests.integration.helpers import RawClient, wait_for
from tests.integration.test_deploy_files import COMPOSE_DIR, run, tool, unknown_metrics

pytestmark = pytest.mark.integration

DASHBOARDS = COMPOSE_DIR / "grafana" / "dashboards"
PROVISIONING = COMPOSE_DIR / "grafana" / "provisioning"
DATABASE = "site_dashboards"
PLANT, FURNACE = "P1", "P1-EAF1"
# What Grafana puts in place of its own variables, for running a query outside it.
BUILTIN = {
    "timeFilter": "time >= 0",
    "__interval": "1h",
    "__rate_interval": "5m",
    "__range": "1h",
    "col": "col",
}


# -- the agent's data in InfluxDB -------------------------------------------------------


@dataclass
class Site:
    influxd: InfluxdServer
    published: list[PredictionBody]
    drift_at: list[int]


def influxql(server: InfluxdServer, query: str) -> dict[str, Any]:
    """InfluxDB's answer to one statement over its HTTP API (nanosecond timestamps)."""
    response = httpx.get(
        f"{server.url}/query", params={"db": DATABASE, "q": query, "epoch": "ns"}, timeout=30
    )
    answer: dict[str, Any] = response.json()
    return answer


def rows(server: InfluxdServer, query: str) -> list[dict[str, Any]]:
    """Every row of the answer as a column -> value mapping; fails on an error."""
    answer = influxql(server, query)
    assert "error" not in answer, (query, answer["error"])  # e.g. a syntax error
    (result,) = answer["results"]
    assert "error" not in result, (query, result["error"])
    return [
        dict(zip(s["columns"], values, strict=True))
        for s in result.get("series", [])
        for values in s["values"]
    ]


@pytest.fixture(scope="module")
def site(influxd: InfluxdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """An agent on model version 0 until it detects the drift of its Cu supply (heat 100),
    its predictions as published; every point delivered to InfluxDB."""
    work = tmp_path_factory.mktemp("site")
    broker = Mosquitto(work)
    broker.start()
    topics, spec = Topics("site"), ModelSpec(architecture="eaf-hybrid-v1")
    settings = AgentSettings.load(
        None,
        broker=broker.url,
        federation="site",
        agent_id="plant-1",
        history_heats=60,
        heat_interval_s=0.02,
        influx=influxd.url,
        database=DATABASE,
        signal_period_s=60.0,
        state_dir=work / "agents",
        drift=["supplier_change@100:cu_factor=4.0"],
    )
    spy = RawClient(broker.host, broker.port, "site-spy")
    agent = AgentThread(settings)
    a = agent.agent
    try:
        spy.subscribe(topics.agent_predictions("plant-1"))
        spy.publish(
            topics.model_current,
            first_model(spec),
            retain=True,
        )
        agent.start()
        wait_for(
            lambda: a.learner is not None and a.learner.drift_events > 0, 120, "a drift detection"
        )
        agent.stop()
        assert not agent.thread.is_alive()
        assert a.learner is not None and a.table is not None
        seen = a.table.seen
        wait_for(
            lambda: len(spy.received(topics.agent_predictions("plant-1"))) == seen - 60,
            30,
            "every prediction published",
        )
        published = [
            decode(p, PredictionBody).body  # type: ignore[misc]
            for p in spy.received(topics.agent_predictions("plant-1"))
        ]
        count = f'SELECT count("model_version") FROM "{ERROR_MEASUREMENT}"'
        wait_for(
            lambda: [r["count"] for r in rows(influxd, count)] == [len(published)],
            30,
            "the spooled points delivered",
        )
        yield Site(influxd, published, list(a.learner.drift_at))  # type: ignore[arg-type]
    finally:
        agent.stop()
        spy.close()
        broker.stop()


def test_influxdb_holds_what_the_agent_published(site: Site) -> None:
    server, published = site.influxd, site.published
    assert len(published) > 20 and any(p.lower for p in published)
    predictions = rows(server, f'SELECT * FROM "{PREDICTION_MEASUREMENT}"')
    errors = rows(server, f'SELECT * FROM "{ERROR_MEASUREMENT}"')
    taps = {r["heat"]: r["time"] for r in rows(server, 'SELECT * FROM "eaf_tap"')}
    by_heat = {r["heat"]: r for r in predictions}
    error_of = {r["heat"]: r for r in errors}
    assert sorted(by_heat) == sorted(error_of) == sorted(p.heat_id for p in published)
    for sent in published:
        point, error = by_heat[sent.heat_id], error_of[sent.heat_id]
        assert (point["plant"], point["furnace"]) == (PLANT, FURNACE)
        assert point["time"] == error["time"] == taps[sent.heat_id]  # at the tap
        assert point["model_version"] == sent.model_version == 0
        for t, value in sent.outputs.items():
            assert point[f"predicted_{t}"] == value
            assert point[f"lower_{t}"] == (sent.lower or {}).get(t)
            assert point[f"upper_{t}"] == (sent.upper or {}).get(t)
            assert error[f"abs_error_{t}"] == pytest.approx(abs(value - point[f"actual_{t}"]))
    # The actual outcome is the one the plant's gateway wrote (tap fields as stored).
    tap = rows(server, f'SELECT * FROM "eaf_tap" WHERE "heat" = \'{published[0].heat_id}\'')
    assert by_heat[published[0].heat_id]["actual_cu_pct"] == tap[0]["cu_pct"]
    (drift,) = rows(server, f'SELECT * FROM "{DRIFT_MEASUREMENT}"')
    assert drift["heat"] == f"P1-{site.drift_at[0] - 1:06d}"
    assert drift["time"] == taps[drift["heat"]] and drift["error_cu_pct"] == 1.0


# -- the dashboards ----------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    return {f.stem: json.loads(f.read_text()) for f in sorted(DASHBOARDS.glob("*.json"))}


def provisioned_sources() -> dict[str, str]:
    """uid -> type of every data source Grafana is provisioned with."""
    return {
        s["uid"]: s["type"]
        for f in (PROVISIONING / "datasources").glob("*.yaml")
        for s in yaml.safe_load(f.read_text())["datasources"]
    }


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows, those inside collapsed rows included."""
    out = []
    for p in board["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def queries(board: dict[str, Any], kind: str) -> list[tuple[str, str]]:
    """(where, query text) of every query on data sources of type ``kind``: panel
    targets, annotations, template variables."""
    key = {"prometheus": "expr", "influxdb": "query"}[kind]
    out = []
    for p in panels(board):
        for t in p["targets"]:
            if (t.get("datasource") or p["datasource"])["type"] == kind:
                out.append((f"panel {p['title']!r} {t['refId']}", t[key]))
    for a in board["annotations"]["list"]:
        if a["datasource"]["type"] == kind:  # the legacy and the current place of it
            out += [(f"annotation {a['name']!r}", q) for q in (a["query"], a["target"]["query"])]
    for v in board["templating"]["list"]:
        if v["type"] == "query" and v["datasource"]["type"] == kind:
            q = v["query"]
            out.append((f"variable {v['name']!r}", q["query"] if isinstance(q, dict) else q))
    return out


def substitute(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``$name`` / ``${name}`` replaced; raises on an unknown one."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"undefined variable ${name} in {text!r}")
        return values[name]

    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", one, text)


def source_findings(board: dict[str, Any]) -> list[str]:
    """Every data source a panel target, annotation or variable names that is not a
    provisioned one (by uid, of that type)."""
    sources = provisioned_sources()
    used = [
        (f"panel {p['title']!r}", t.get("datasource") or p["datasource"])
        for p in panels(board)
        for t in p["targets"]
    ]
    used += [
        (f"annotation {a['name']!r}", a["datasource"])
        for a in board["annotations"]["list"]
        if not a.get("builtIn")
    ]
    used += [
        (f"variable {v['name']!r}", v["datasource"])
        for v in board["templating"]["list"]
        if v["type"] == "query"
    ]
    return [
        f"{where}: {source}"
        for where, source in used
        if sources.get(source["uid"]) != source["type"]
    ]


def test_the_dashboards_are_the_coordinator_and_the_site() -> None:
    assert set(dashboards()) == {"coordinator", "site"}


@pytest.mark.parametrize("name", ["coordinator", "site"])
def test_a_dashboard_is_grafana_json_on_the_provisioned_sources(name: str) -> None:
    board = dashboards()[name]
    assert board["uid"] == f"alchimia-{name}" and board["title"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]] + [
        q["id"] for p in board["panels"] for q in p.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(board):
        assert p["type"] and p["title"] and set(p["gridPos"]) == {"h", "w", "x", "y"}
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        assert p["targets"] and all(t["refId"] for t in p["targets"]), p["title"]
    assert source_findings(board) == []
    variables = {v["name"] for v in board["templating"]["list"]}
    # Every variable a query or title uses is defined (or one of Grafana's own).
    known = {**BUILTIN, **{v: "x" for v in variables}}
    for kind in ("prometheus", "influxdb"):
        for _, text in queries(board, kind):
            substitute(text, known)
    for p in panels(board):
        substitute(p["title"], known)
        if "repeat" in p:
            assert p["repeat"] in variables


def test_undefined_variables_and_unknown_sources_are_found() -> None:
    """Negative controls of the checks above."""
    with pytest.raises(KeyError, match=r"\$plnat"):
        substitute('SELECT * FROM "x" WHERE "plant" =~ /^$plnat$/', {"plant": "P1"})
    board = dashboards()["site"]
    board["panels"][1]["targets"][0]["datasource"] = {"type": "influxdb", "uid": "influx"}
    board["annotations"]["list"][-1]["datasource"]["type"] = "prometheus"
    assert len(source_findings(board)) == 2


def promql_findings(exprs: list[str], tmp_path: Path) -> str:
    """What ``promtool check rules`` says of these expressions (recording rules); ""
    when every one parses."""
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [{"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = run(tool("promtool", "prometheus"), "check", "rules", str(path))
    return "" if checked.returncode == 0 else checked.stdout + checked.stderr


def test_every_promql_query_parses_and_uses_exported_metrics(tmp_path: Path) -> None:
    exprs = []
    for board in dashboards().values():
        values = {**BUILTIN, **{v["name"]: ".*" for v in board["templating"]["list"]}}
        # A variable's label_values(EXPR, LABEL) is Grafana's: EXPR is the PromQL.
        exprs += [
            re.sub(r"^label_values\((.+),\s*\w+\)$", r"\1", substitute(q, values))
            for _, q in queries(board, "prometheus")
        ]
    assert len(exprs) > 20
    text = "\n".join(exprs)
    assert not unknown_metrics(text), unknown_metrics(text)
    for metric in (
        "alchimia_model_version",
        "alchimia_rounds_total",
        "alchimia_round_duration_seconds_bucket",
        "alchimia_updates_total",
        "alchimia_agents",
        "alchimia_rejections_total",
        "alchimia_heats_total",
        "alchimia_spool_bytes",
        "alchimia_store_points_total",
    ):
        assert metric in text, metric
    assert promql_findings(exprs, tmp_path) == ""
    # Negative control: a broken expression is reported.
    assert promql_findings([exprs[0], "sum by (le (x)"], tmp_path) != ""


def influx_values(board: dict[str, Any], target: str) -> dict[str, str]:
    return {
        **BUILTIN,
        "plant": PLANT,
        "furnace": FURNACE,
        "target": target,
        **{
            v["name"]: ".*"
            for v in board["templating"]["list"]
            if v.get("datasource", {}).get("type") == "prometheus"
        },
    }


def test_every_influxql_query_runs_on_the_agents_data(site: Site) -> None:
    """Each query of the site dashboard (for each target of a repeated panel) on the
    agent's data: no error, and results (a drift was detected, so its panels too)."""
    board = dashboards()["site"]
    targets = next(v for v in board["templating"]["list"] if v["name"] == "target")
    assert [o["value"] for o in targets["options"]] == list(TARGETS)
    found = queries(board, "influxdb")
    assert len(found) >= 10
    for where, query in found:
        for target in TARGETS if "$target" in query else TARGETS[:1]:
            text = substitute(query, influx_values(board, target))
            got = rows(site.influxd, text)
            assert got and any(v is not None for r in got for k, v in r.items() if k != "time"), (
                f"{where} ({target}): no data for {text}"
            )


def test_a_wrong_influxql_query_is_found(site: Site) -> None:
    """Negative controls: a syntax error is InfluxDB's error, a misspelt field no data."""
    with pytest.raises(AssertionError, match="error"):
        rows(site.influxd, 'SELECT "predicted_cu_pct" FRM "alchimia_prediction"')
    assert rows(site.influxd, 'SELECT "predicted_cu" FROM "alchimia_prediction"') == []
