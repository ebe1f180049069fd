"""The coordinator's admin web page (issue 13, "See it") in Debian's headless Chromium,
against a real Mosquitto, coordinator and two agents: agents, versions, the plot of error
per plant per version, a drift report and a forged message the coordinator rejected; and
no page without the token. The screenshot is written to the test's tmp_path and copied
to runs/screenshots/admin-web-page.png (both paths printed)."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from alchimia.broker.embedded import free_port
from alchimia.broker.schemas import MetricsBody, message
from alchimia.broker.topics import Topics
from alchimia.local import LocalFederation
from tests.integration.helpers import RawClient, wait_for

TOKEN = "web-page-test-token-0123456789"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "runs" / "screenshots"


def _status(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=10) as r:
        return json.loads(r.read())


def _validated(doc: dict[str, Any], version: int, agents: set[str]) -> bool:
    return any(v["version"] >= version and set(v["errors"]) >= agents for v in doc["versions"])


def test_the_admin_page_in_chromium(mosquitto, chromium, tmp_path: Path, capsys) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    fed = LocalFederation(
        mosquitto.url,
        "web",
        2,
        tmp_path / "coord",
        coordinator={
            "min_agents": 2,
            "epochs": 1,
            "round_schedule_s": 0.5,
            "web_port": port,
            "web_token_file": token_file,
        },
        agent={"history_heats": 60, "heat_interval_s": 0, "signal_period_s": 10.0},
    )
    base = f"http://127.0.0.1:{port}"
    ids = {"plant-1", "plant-2"}
    raw = RawClient(mosquitto.host, mosquitto.port, "web-forger")
    try:
        coordinator = fed.start_coordinator().coordinator
        assert coordinator is not None
        fed.start_agents()
        wait_for(
            lambda: _validated(_status(base), 2, ids), 120, "both plants' validation of version 2"
        )
        # Anyone on an open broker can publish: a forged update, and a drift report.
        topics = Topics("web")
        raw.publish(topics.agent_update("plant-1"), b"forged: not an update")
        raw.publish(
            topics.agent_metrics("plant-2"),
            message(
                "plant-2", MetricsBody(model_version=1, scope="drift", values={"energy_kwh_t": 4.5})
            ),
        )
        wait_for(
            lambda: (d := _status(base))["rejections"] and d["drift"],
            30,
            "the rejection and the drift report",
        )

        # No token, no page: not over HTTP, not in a browser.
        for url in (f"{base}/", f"{base}/api/status", f"{base}/?token=wrong"):
            try:
                urllib.request.urlopen(url, timeout=10)
                raise AssertionError(f"{url} was served without the token")
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
        refused = chromium.dump_dom(f"{base}/")
        assert "a token is needed" in refused and "plant-1" not in refused

        page = f"{base}/?token={TOKEN}"
        dom = chromium.dump_dom(page)
        shot = chromium.screenshot(page, tmp_path / "admin-web-page.png")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        kept = shutil.copy(shot, SCREENSHOTS / shot.name)
        with capsys.disabled():
            print(f"\nadmin web page screenshot: {shot} (copy: {kept})")
    finally:
        raw.close()
        fed.stop()

    assert re.search(r"federation web</h1>", dom)
    agents = _section(dom, "agents")
    for agent in ids:
        assert f'<span class="agent-id">{agent}</span>' in agents
    assert agents.count('class="online"') == 2
    versions = _section(dom, "versions")
    shown = [int(v) for v in re.findall(r"<tr><td>(\d+)</td>", versions)]
    assert shown[:1] and shown == sorted(shown, reverse=True) and shown[-1] == 0
    assert len(shown) >= 3 and "initial" in versions
    assert "<th>plant-1: MAE energy_kwh_t</th>" in versions
    # One SVG plot per target, each with a line and points for both plants.
    plots = re.findall(r'<svg class="plot" data-target="(\w+)".*?</svg>', dom, re.S)
    assert plots and "energy_kwh_t" in plots and "cu_pct" in plots
    energy = re.search(r'<svg class="plot" data-target="energy_kwh_t".*?</svg>', dom, re.S)
    assert energy is not None
    for agent in ids:
        series = re.search(rf'<g class="series" data-agent="{agent}".*?</g>', energy.group(), re.S)
        assert series is not None and "<polyline" in series.group()
        assert series.group().count("<circle") >= 3  # versions 0, 1, 2 at least
    drift = _section(dom, "drift")
    assert "plant-2" in drift and "energy_kwh_t=4.5" in drift
    rejections = _section(dom, "rejections")
    assert "plant-1" in rejections and "alchimia/v1/web/agents/plant-1/update" in rejections
    assert "malformed" in _section(dom, "rejection-counts")


def _section(dom: str, table_id: str) -> str:
    match = re.search(rf'<table id="{table_id}">.*?</table>', dom, re.S)
    assert match is not None, f"no table {table_id} in the page"
    return match.group()
