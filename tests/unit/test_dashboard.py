"""The admin web page (coordinator.dashboard, coordinator.web): its snapshot of a real
Coordinator fed messages directly (nothing connected), the HTML and SVG it renders from
hostile strings, the token check, and the HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from alchimia.broker.schemas import MetricsBody, StatusBody, message
from alchimia.coordinator.dashboard import (
    AgentRow,
    Dashboard,
    RejectionRow,
    error_plot,
    latest_validation,
    render_html,
    version_rows,
)
from alchimia.coordinator.persistence import CoordinatorDB
from alchimia.coordinator.service import Coordinator
from alchimia.coordinator.settings import CoordinatorSettings
from alchimia.coordinator.web import WebServer, authorized, on_loop, snapshot, web_token

EVIL = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
TOKEN = "0123456789abcdef-token"


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(CoordinatorSettings.load(None, federation="w", state_dir=tmp_path))
    yield c
    c.db.close()


def _validation(c: Coordinator, agent: str, version: int, energy: float) -> None:
    values = {f"mae_{t}": energy * (i + 1) for i, t in enumerate(c.spec.targets)}
    c.handle(
        c.topics.agent_metrics(agent),
        message(agent, MetricsBody(model_version=version, scope="validation", values=values)),
    )


def _dashboard(**changes: object) -> Dashboard:
    fields: dict[str, object] = dict(
        federation="f",
        coordinator_id="coordinator",
        taken_ts=0.0,
        version=2,
        activity="running",
        mode="sync",
        targets=("energy_kwh_t", "cu_pct"),
        round=None,
        agents=[],
        versions=version_rows(
            [
                (0, None, 1.0, {"initial": True}),
                (1, 1, 2.0, {"strategy": "fedavg"}),
                (2, None, 3.0, {"strategy": "fedavg", "rollback_of": 0}),
            ],
            [
                (0, "p1", {"mae_energy_kwh_t": 80.0}),
                (1, "p1", {"mae_energy_kwh_t": 10.0}),
                (1, "p2", {"mae_energy_kwh_t": 20.0, "mae_cu_pct": 0.02}),
            ],
        ),
        drift=[],
        rejection_counts={},
        rejections=[],
    )
    fields.update(changes)
    return Dashboard(**fields)  # type: ignore[arg-type]


def test_the_snapshot_reads_agents_versions_validation_drift_and_rejections(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    c = coordinator
    for agent in ("plant-1", "plant-2"):
        c.handle(
            c.topics.agent_status(agent),
            message(
                agent,
                StatusBody(
                    role="agent", state="online", samples=120, software="alchimia-agent/0.1"
                ),
            ),
        )
    _validation(c, "plant-1", 0, 50.0)
    _validation(c, "plant-2", 0, 70.0)
    _validation(c, "plant-2", 5, 1.0)  # a version that does not exist: not kept
    c.handle(
        c.topics.agent_metrics("plant-2"),
        message(
            "plant-2", MetricsBody(model_version=0, scope="drift", values={"energy_kwh_t": 3.5})
        ),
    )
    c.handle(c.topics.agent_update("plant-1"), b"not msgpack")
    c.handle("alchimia/v1/w/agents/\u202eevil\n/status", b"")  # bidi, newline: escaped

    d = snapshot(c)
    assert (d.federation, d.version, d.activity, d.round) == ("w", 0, "running", None)
    agents = {a.agent_id: a for a in d.agents}
    assert set(agents) == {"plant-1", "plant-2"}
    assert agents["plant-1"].online and agents["plant-1"].heats == 120
    assert agents["plant-1"].validation_version == 0
    assert agents["plant-1"].validation["mae_energy_kwh_t"] == 50.0
    assert (agents["plant-1"].drift_events, agents["plant-2"].drift_events) == (0, 1)
    assert (agents["plant-1"].rejected, agents["plant-2"].rejected) == (1, 0)
    assert [v.version for v in d.versions] == [0] and d.versions[0].note == "initial"
    assert set(d.versions[0].errors) == {"plant-1", "plant-2"}
    assert d.drift[0].agent_id == "plant-2" and d.drift[0].values == {"energy_kwh_t": 3.5}
    assert d.rejections[0].topic == "alchimia/v1/w/agents/\\u202eevil\\x0a/status"
    assert d.rejections[1].sender == "plant-1" and d.rejections[1].topic.endswith("/update")
    assert sum(d.rejection_counts.values()) == 2
    json.dumps(d.as_json(), allow_nan=False)  # /api/status serves it

    # Versions, validation and drift are on disk: a restarted coordinator shows them.
    c.db.close()
    again = Coordinator(CoordinatorSettings.load(None, federation="w", state_dir=tmp_path))
    try:
        d2 = snapshot(again)
        assert d2.versions == d.versions and d2.drift == d.drift
        assert {a.agent_id: a.validation for a in d2.agents} == {
            a.agent_id: a.validation for a in d.agents
        }
        assert d2.rejections == []  # those are counted since the coordinator started
    finally:
        again.db.close()
        c.db = again.db  # the fixture closes it again, harmlessly


def test_the_reports_kept_on_disk_are_bounded(tmp_path: Path) -> None:
    db = CoordinatorDB(tmp_path)
    try:
        for version in range(6):
            db.save_validation(version, "a", 0.0, {"mae_x": float(version)}, keep=3)
        db.save_validation(5, "a", 1.0, {"mae_x": 0.5}, keep=3)  # the latest report wins
        assert db.validation() == [
            (2, "a", {"mae_x": 2.0}),
            (3, "a", {"mae_x": 3.0}),
            (4, "a", {"mae_x": 4.0}),
            (5, "a", {"mae_x": 0.5}),
        ]
        assert [v for v, _, _ in db.validation(since_version=4)] == [4, 5]
        for i in range(5):
            db.save_drift(float(i), f"a{i}", None, {"x": 1.0}, keep=2)
        assert [(ts, a) for ts, a, _, _ in db.drift_events(10)] == [(4.0, "a4"), (3.0, "a3")]
        assert len(db.drift_events(1)) == 1
    finally:
        db.close()


def test_every_string_from_the_wire_is_escaped() -> None:
    d = _dashboard(
        agents=[AgentRow(EVIL, True, 0.0, EVIL, 1, 1, 1, {}, 0, 3)],
        rejections=[RejectionRow(EVIL, f"alchimia/v1/f/agents/{EVIL}/update", "malformed", EVIL)],
        rejection_counts={"malformed": 1},
        versions=version_rows(
            [(1, 1, 0.0, {"strategy": EVIL, "contributors": [EVIL]})],
            [(1, EVIL, {"mae_energy_kwh_t": 5.0})],
        ),
    )
    page = render_html(d)
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img" in page
    assert page.count("&lt;script&gt;") >= 6  # agent, software, sender, topic, reason, ...


def test_the_plot_has_a_series_per_plant_and_a_point_per_reported_version() -> None:
    d = _dashboard()
    svg = ET.fromstring(error_plot(d.versions, "energy_kwh_t", ["p1", "p2", "p3"]))
    ns = "{http://www.w3.org/2000/svg}"
    series = {g.get("data-agent"): g for g in svg.iter(f"{ns}g") if g.get("class") == "series"}
    assert set(series) == {"p1", "p2"}  # p3 reported nothing
    assert len(series["p1"].findall(f"{ns}circle")) == 2
    assert len(series["p2"].findall(f"{ns}circle")) == 1
    (first, second) = series["p1"].findall(f"{ns}circle")
    assert float(first.get("cy")) < float(second.get("cy"))  # error 80 plotted above 10
    assert float(first.get("cx")) < float(second.get("cx"))  # version 0 left of 1
    empty = error_plot(d.versions, "sn_pct", ["p1"])
    assert "no validation reports yet" in empty and "series" not in empty


def test_version_rows_join_validation_and_latest_report_per_agent() -> None:
    rows = _dashboard().versions
    assert [(r.version, r.note) for r in rows] == [(0, "initial"), (1, ""), (2, "rollback of 0")]
    assert rows[1].errors == {
        "p1": {"mae_energy_kwh_t": 10.0},
        "p2": {"mae_energy_kwh_t": 20.0, "mae_cu_pct": 0.02},
    }
    latest = latest_validation([(3, "a", {"x": 1.0}), (1, "a", {"x": 9.0}), (2, "b", {})])
    assert latest == {"a": (3, {"x": 1.0}), "b": (2, {})}


def test_the_page_lists_versions_newest_first_with_each_plants_error() -> None:
    page = render_html(_dashboard())
    table = page[page.index('id="versions"') : page.index("</table>", page.index('id="versions"'))]
    assert table.index("<td>2</td>") < table.index("<td>1</td>") < table.index("<td>0</td>")
    assert "<th>p1: MAE energy_kwh_t</th>" in table and "<td>20</td>" in table
    assert 'http-equiv="refresh" content="10"' in page


@pytest.mark.parametrize(
    ("header", "query", "ok"),
    [
        (f"Bearer {TOKEN}", "", True),
        (f"bearer  {TOKEN} ", "", True),
        (None, f"token={TOKEN}", True),
        (None, f"a=1&token=x&token={TOKEN}", True),
        (None, "", False),
        ("Bearer wrong", "", False),
        (f"Basic {TOKEN}", "", False),
        (None, f"token={TOKEN}x", False),
        ("Bearer", "", False),
    ],
)
def test_the_token_is_needed(header: str | None, query: str, ok: bool) -> None:
    assert authorized(header, query, TOKEN) is ok


def test_the_token_file_is_created_once_private_and_checked(tmp_path: Path) -> None:
    s = CoordinatorSettings.load(None, state_dir=tmp_path)
    token = web_token(s)
    path = tmp_path / "web-token"
    assert len(token) >= 40 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert web_token(s) == token  # kept, not replaced
    with pytest.raises(ValueError, match="cannot read"):
        web_token(
            CoordinatorSettings.load(None, state_dir=tmp_path, web_token_file=tmp_path / "missing")
        )
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match="shorter"):
        web_token(
            CoordinatorSettings.load(None, state_dir=tmp_path, web_token_file=tmp_path / "short")
        )


def test_on_loop_runs_on_the_loop_thread_and_times_out_when_it_does_not_run() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert on_loop(loop, threading.get_ident) == thread.ident
        with pytest.raises(ZeroDivisionError):
            on_loop(loop, lambda: 1 / 0)
        loop.call_soon_threadsafe(time.sleep, 0.5)  # the loop is busy
        with pytest.raises(TimeoutError):
            on_loop(loop, threading.get_ident, timeout=0.05)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    with pytest.raises(RuntimeError):
        on_loop(loop, threading.get_ident)


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_the_server_answers_the_token_only() -> None:
    failure: list[BaseException] = []

    def take() -> Dashboard:
        if failure:
            raise failure[0]
        return _dashboard()

    server = WebServer(take, "127.0.0.1", 0, TOKEN)
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, headers, _ = _get(f"{base}/")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert _get(f"{base}/", "wrong")[0] == 401
        status, headers, body = _get(f"{base}/", TOKEN)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none'
        assert b'class="plot"' in body
        status, _, body = _get(f"{base}/api/status?token={TOKEN}")
        assert status == 200 and json.loads(body)["versions"][1]["errors"]["p2"]
        assert _get(f"{base}/other", TOKEN)[0] == 404
        failure.append(TimeoutError())
        assert _get(f"{base}/", TOKEN)[0] == 503
        failure[0] = KeyError("a bug")
        assert _get(f"{base}/", TOKEN)[0] == 500
    finally:
        server.close()
