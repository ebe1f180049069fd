"""The coordinator's admin web page, as data and as HTML, without I/O.

:class:`Dashboard` is a snapshot of what the coordinator knows (``coordinator.web`` takes
it on the coordinator's event loop); :func:`render_html` turns it into one page with no
script: agents, versions over time with each plant's validation error, a plot of error
per plant per version for every target (inline SVG), drift reports and rejected
messages. Agent ids, topics and rejection reasons come from the network: every string
goes through :func:`html.escape` on its way into the page.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# A colour per plant in the plot (cycled beyond ten plants).
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
PLOT_W, PLOT_H = 420, 240
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 12, 24, 32


@dataclass(frozen=True)
class AgentRow:
    agent_id: str
    online: bool
    last_seen: float
    software: str
    heats: int  # training heats it holds, as it last said
    model_version: int | None
    validation_version: int | None  # the version of its latest validation report
    validation: dict[str, float]  # that report's figures (mae_{target}, n)
    drift_events: int
    rejected: int  # its messages the coordinator dropped since it started


@dataclass(frozen=True)
class VersionRow:
    version: int
    created_ts: float
    round_id: int | None
    strategy: str
    contributors: list[str]
    note: str  # "initial", "rollback of 3", ""
    errors: dict[str, dict[str, float]]  # agent -> its validation figures of this version


@dataclass(frozen=True)
class DriftRow:
    ts: float
    agent_id: str
    version: int | None
    values: dict[str, float]


@dataclass(frozen=True)
class RejectionRow:
    sender: str
    topic: str
    code: str
    reason: str


@dataclass(frozen=True)
class RoundRow:
    round_id: int
    mode: str
    base_version: int
    selected: list[str]
    accepted: list[str]
    deadline_ts: float  # 0: none (async)


@dataclass(frozen=True)
class Dashboard:
    federation: str
    coordinator_id: str
    taken_ts: float
    version: int
    activity: str  # running, paused, stopping
    mode: str
    targets: tuple[str, ...]
    round: RoundRow | None
    agents: list[AgentRow]
    versions: list[VersionRow]  # oldest first
    drift: list[DriftRow]  # newest first
    rejection_counts: dict[str, int]  # by reason code, since the coordinator started
    rejections: list[RejectionRow]  # newest first (the latest few)

    def as_json(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data (``/api/status``)."""
        return asdict(self)


def version_rows(
    versions: Iterable[tuple[int, int | None, float, Mapping[str, Any]]],
    validation: Iterable[tuple[int, str, Mapping[str, float]]],
) -> list[VersionRow]:
    """Rows of ``CoordinatorDB.versions()`` joined with ``CoordinatorDB.validation()``."""
    errors: dict[int, dict[str, dict[str, float]]] = {}
    for version, agent, figures in validation:
        errors.setdefault(version, {})[agent] = dict(figures)
    rows = []
    for version, round_id, ts, meta in versions:
        note = (
            "initial"
            if meta.get("initial")
            else f"rollback of {meta['rollback_of']}"
            if "rollback_of" in meta
            else ""
        )
        rows.append(
            VersionRow(
                version,
                ts,
                round_id,
                str(meta.get("strategy", "")),
                [str(c) for c in meta.get("contributors", [])],
                note,
                errors.get(version, {}),
            )
        )
    return rows


def latest_validation(
    validation: Iterable[tuple[int, str, Mapping[str, float]]],
) -> dict[str, tuple[int, dict[str, float]]]:
    """Each agent's newest validation report: ``agent -> (version, figures)``."""
    latest: dict[str, tuple[int, dict[str, float]]] = {}
    for version, agent, figures in validation:
        if agent not in latest or version >= latest[agent][0]:
            latest[agent] = (version, dict(figures))
    return latest


# -- HTML


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(ts: float) -> str:
    if not ts or not math.isfinite(ts):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _opt(value: object | None) -> str:
    return "-" if value is None else _e(value)


def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4g}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], table_id: str) -> str:
    """A table; ``rows`` hold HTML already escaped."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about ``ticks`` ticks."""
    raw = span / ticks if span > 0 else 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def error_plot(versions: Sequence[VersionRow], target: str, agents: Sequence[str]) -> str:
    """An SVG line plot of each agent's validation MAE of ``target`` against the version:
    one ``<g class="series" data-agent=...>`` per agent that reported it."""
    key = f"mae_{target}"
    series = {
        a: [
            (v.version, v.errors[a][key])
            for v in versions
            if key in v.errors.get(a, {}) and math.isfinite(v.errors[a][key])
        ]
        for a in agents
    }
    series = {a: pts for a, pts in series.items() if pts}
    title = f'<text x="{MARGIN_L}" y="16" class="title">MAE {_e(target)}</text>'
    if not series:
        return (
            f'<svg class="plot" data-target="{_e(target)}" width="{PLOT_W}" '
            f'height="{PLOT_H}">{title}<text x="{MARGIN_L}" y="{PLOT_H // 2}">'
            "no validation reports yet</text></svg>"
        )
    xs = [x for pts in series.values() for x, _ in pts]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y1 = max(y for pts in series.values() for _, y in pts) * 1.05 or 1.0
    step = _nice_step(y1)
    y1 = math.ceil(y1 / step) * step
    w, h = PLOT_W - MARGIN_L - MARGIN_R, PLOT_H - MARGIN_T - MARGIN_B

    def px(x: float) -> float:
        return MARGIN_L + (x - x0) / (x1 - x0) * w

    def py(y: float) -> float:
        return MARGIN_T + h - y / y1 * h

    parts = [title, f'<rect x="{MARGIN_L}" y="{MARGIN_T}" width="{w}" height="{h}" class="frame"/>']
    n_ticks = round(y1 / step)
    for i in range(n_ticks + 1):
        y = i * step
        parts.append(
            f'<line x1="{MARGIN_L}" x2="{MARGIN_L + w}" y1="{py(y):.1f}" '
            f'y2="{py(y):.1f}" class="grid"/><text x="{MARGIN_L - 4}" '
            f'y="{py(y) + 4:.1f}" text-anchor="end">{y:.4g}</text>'
        )
    x_step = max(1, math.ceil(_nice_step(x1 - x0)))
    for x in range(x0 - x0 % x_step, x1 + 1, x_step):
        if x >= x0:
            parts.append(
                f'<text x="{px(x):.1f}" y="{MARGIN_T + h + 14}" text-anchor="middle">{x}</text>'
            )
    parts.append(
        f'<text x="{MARGIN_L + w / 2:.1f}" y="{PLOT_H - 4}" text-anchor="middle">version</text>'
    )
    for i, (agent, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        dots = "".join(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5"><title>'
            f"{_e(agent)} v{x}: {y:.4g}</title></circle>"
            for x, y in pts
        )
        legend = (
            f'<text x="{MARGIN_L + w - 4}" y="{MARGIN_T + 14 + 13 * i}" '
            f'text-anchor="end">{_e(agent)}</text>'
        )
        parts.append(
            f'<g class="series" data-agent="{_e(agent)}" stroke="{colour}" '
            f'fill="{colour}"><polyline points="{points}" fill="none"/>{dots}'
            f"{legend}</g>"
        )
    return (
        f'<svg class="plot" data-target="{_e(target)}" width="{PLOT_W}" '
        f'height="{PLOT_H}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )


STYLE = """
body{font:13px system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:20px 0 6px}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
th{background:#f0f0f0} .online{color:#080} .offline{color:#b00}
.plots{display:flex;flex-wrap:wrap;gap:8px} .plot text{font-size:10px;stroke:none}
.plot .title{font-size:12px;font-weight:bold} .plot .frame{fill:none;stroke:#999}
.plot .grid{stroke:#eee} .plot text.title{fill:#222} .muted{color:#777}
"""


def render_html(d: Dashboard, refresh_s: int = 10, max_versions: int = 100) -> str:
    """The whole page; it reloads itself every ``refresh_s`` seconds (no script)."""
    first = d.targets[0] if d.targets else ""
    agent_ids = [a.agent_id for a in d.agents]
    for row in d.versions:  # agents that reported once but are no longer known
        agent_ids += [a for a in row.errors if a not in agent_ids]
    agents = _table(
        [
            "agent",
            "state",
            "last seen",
            "software",
            "heats",
            "model version",
            "validated version",
            *(f"MAE {t}" for t in d.targets),
            "drift events",
            "rejected",
        ],
        (
            [
                f'<span class="agent-id">{_e(a.agent_id)}</span>',
                f'<span class="{"online" if a.online else "offline"}">'
                f"{'online' if a.online else 'offline'}</span>",
                _when(a.last_seen),
                _e(a.software),
                str(a.heats),
                _opt(a.model_version),
                _opt(a.validation_version),
                *(_num(a.validation.get(f"mae_{t}")) for t in d.targets),
                str(a.drift_events),
                str(a.rejected),
            ]
            for a in d.agents
        ),
        "agents",
    )
    versions = _table(
        [
            "version",
            "created",
            "round",
            "strategy",
            "contributors",
            "note",
            *(f"{a}: MAE {first}" for a in agent_ids),
        ],
        (
            [
                str(v.version),
                _when(v.created_ts),
                _opt(v.round_id),
                _e(v.strategy),
                _e(", ".join(v.contributors)),
                _e(v.note),
                *(_num(v.errors.get(a, {}).get(f"mae_{first}")) for a in agent_ids),
            ]
            for v in reversed(d.versions[-max_versions:])
        ),
        "versions",
    )
    plots = "".join(error_plot(d.versions, t, agent_ids) for t in d.targets)
    drift = _table(
        ["time", "agent", "version", "figures"],
        (
            [
                _when(r.ts),
                _e(r.agent_id),
                _opt(r.version),
                _e(", ".join(f"{k}={_num(v)}" for k, v in r.values.items())),
            ]
            for r in d.drift
        ),
        "drift",
    )
    counts = _table(
        ["reason", "messages"],
        ([_e(k), str(n)] for k, n in sorted(d.rejection_counts.items())),
        "rejection-counts",
    )
    recent = _table(
        ["sender", "topic", "reason code", "why"],
        ([_e(r.sender), _e(r.topic), _e(r.code), _e(r.reason)] for r in d.rejections),
        "rejections",
    )
    r = d.round
    round_line = (
        "no round open"
        if r is None
        else f"round {r.round_id} open ({_e(r.mode)}), base version {r.base_version}, "
        f"selected {_e(', '.join(r.selected))}, accepted "
        f"{_e(', '.join(r.accepted) or 'none yet')}"
        + (f", deadline {_when(r.deadline_ts)}" if r.deadline_ts else "")
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{int(refresh_s)}">'
        f"<title>alchimia {_e(d.federation)}</title><style>{STYLE}</style></head><body>"
        f"<h1>federation {_e(d.federation)}</h1>"
        f'<p id="summary">coordinator {_e(d.coordinator_id)}: model version '
        f'<b id="version">{d.version}</b>, {_e(d.activity)}, {_e(d.mode)} mode; '
        f'{round_line}. <span class="muted">Taken {_when(d.taken_ts)}.</span></p>'
        f"<h2>Agents ({len(d.agents)})</h2>{agents}"
        f'<h2>Validation error per plant per version</h2><div class="plots">{plots}</div>'
        f"<h2>Versions (newest {min(len(d.versions), max_versions)} of "
        f"{len(d.versions)})</h2>{versions}"
        f"<h2>Drift reports ({len(d.drift)} newest)</h2>{drift}"
        f"<h2>Rejected messages ({sum(d.rejection_counts.values())} since the coordinator "
        "started)</h2>"
        f'{counts}<p class="muted">The newest:</p>{recent}</body></html>'
    )
