"""The InfluxDB store against a real influxd: read-back, outages, crashes, full spool, 4xx."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from alchimia.agent.store import FlushTimeout, InfluxStore, Point, SpoolFullError, open_store
from tests.fixtures.influxd import InfluxdServer

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000
REPO = Path(__file__).resolve().parents[2]
_db_names = itertools.count()


def furnace_points(n: int, heat: str = "H0001", start: int = 0, step: int = SEC) -> list[Point]:
    """Synthetic furnace channels (the simulator is written elsewhere): 10 fields a point."""
    tags = {"plant": "plant-a", "furnace": "eaf-1", "heat": heat}
    return [
        Point(
            "eaf",
            tags,
            {
                "power_mw": (i % 997) * 0.1013 + 60.0,
                "current_ka": math.sin(i / 300) * 20 + 50,
                "voltage_v": 900.0 + (i % 13) / 7,
                "electrode_pos_mm": (i * 7919 % 2000) / 3,
                "temp_c": 1550.0 + (i % 50),
                "o2_nm3h": float(i % 400),
                "carbon_kgmin": i / 86_400,
                "tap": i % 9,
                "slag_foaming": i % 5 == 0,
                "phase": ("melt", "refine", "tap")[i % 3],
            },
            T0 + i * step,
        )
        for i in range(start, start + n)
    ]


@pytest.fixture
def db() -> str:
    return f"t{os.getpid()}_{next(_db_names)}"


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[Callable[..., InfluxStore]]:
    stores: list[InfluxStore] = []

    def make(url: str, database: str, spool: str = "spool", **opts: object) -> InfluxStore:
        opts = {"backoff_initial": 0.05, "backoff_max": 0.5, "flush_timeout": 120.0, **opts}
        store = InfluxStore(url, database, tmp_path / spool, **opts)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close(timeout=5)


def write_in_chunks(store: InfluxStore, points: list[Point], chunk: int = 1000) -> None:
    for i in range(0, len(points), chunk):
        store.write(points[i : i + chunk])


def test_one_day_of_one_furnace_reads_back_exactly(
    influxd: InfluxdServer, db: str, make_store: Callable[..., InfluxStore]
) -> None:
    store = make_store(influxd.url, db)
    points = furnace_points(86_400)
    write_in_chunks(store, points)
    store.flush()
    tags = dict(points[0].tags)
    assert store.count("eaf", tags) == 86_400
    back = store.query_points("eaf", tags)
    assert len(back) == 86_400
    assert back == points
    assert all(type(back[0].fields[k]) is type(v) for k, v in points[0].fields.items())
    assert type(back[0].fields["temp_c"]) is float  # 1550.0 comes back as a float, not 1550
    window = store.query_points("eaf", {"heat": "H0001"}, T0 + 3600 * SEC, T0 + 3610 * SEC)
    assert window == points[3600:3610]
    assert store.distinct_tag_values("eaf", "heat", {"furnace": "eaf-1"}) == ["H0001"]


def test_special_characters_and_extreme_values_round_trip(
    influxd: InfluxdServer, db: str, make_store: Callable[..., InfluxStore]
) -> None:
    store = make_store(influxd.url, db)
    meas = 'eaf, "x"=y\\z'
    tags = {"plant": "a b,c=d", "furnace": 'it\'s \\ "q"', "heat": "ünï\tcode", "k e=y": "v"}
    fields = {
        "s": 'say "hi" \\ bye\\',
        "nl": "a\nb",
        "empty": "",
        "f k=,": 0.1 + 0.2,
        "tiny": 5e-324,
        "huge": 1.7976931348623157e308,
        "negz": -0.0,
        "whole": 1500.0,
        "bigneg": -1e21,
        "imax": 2**63 - 1,
        "imin": -(2**63),
        "t": True,
        "f": False,
    }
    points = [Point(meas, tags, fields, T0), Point(meas, tags, {**fields, "i": 1}, T0 + 1)]
    store.write(points)
    back = store.query_points(meas, tags)
    assert back == points
    for k, v in fields.items():
        assert type(back[0].fields[k]) is type(v), k
    assert math.copysign(1.0, back[0].fields["negz"]) == -1.0  # type: ignore[arg-type]
    for key, value in tags.items():
        assert store.distinct_tag_values(meas, key, {"plant": "a b,c=d"}) == [value]
    assert store.count(meas, {"furnace": 'it\'s \\ "q"'}) == 2


def test_ordering_ties_and_several_heats(
    influxd: InfluxdServer, db: str, make_store: Callable[..., InfluxStore]
) -> None:
    store = make_store(influxd.url, db)
    a = furnace_points(50, heat="H0002")
    b = furnace_points(50, heat="H0001")  # same timestamps, other series
    store.write(a + b)
    back = store.query_points("eaf", {"furnace": "eaf-1"})
    assert back == [p for pair in zip(b, a, strict=True) for p in pair]
    assert store.distinct_tag_values("eaf", "heat") == ["H0001", "H0002"]
    assert store.count("eaf", {"heat": "H0002"}) == 50
    assert store.query_points("eaf", {"heat": "nope"}) == []
    assert store.query_points("nothing_here", {}) == []


def test_influxd_killed_mid_run_loses_and_duplicates_nothing(
    influxd_factory: Callable[[], InfluxdServer],
    db: str,
    make_store: Callable[..., InfluxStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = influxd_factory()
    store = make_store(server.url, db, batch_size=500, flush_interval=0.05)
    points = furnace_points(20_000)
    with caplog.at_level(logging.INFO, logger="alchimia.agent.store.buffered"):
        write_in_chunks(store, points[:8000])
        store.flush()
        server.kill()  # hard: no goodbye to clients
        write_in_chunks(store, points[8000:14_000])
        with pytest.raises(FlushTimeout):
            store.flush(timeout=1.0)  # really not delivered while it is down
        assert store.spool.pending_points >= 6000
        server.start()
        write_in_chunks(store, points[14_000:])
        store.flush()
    tags = dict(points[0].tags)
    assert store.count("eaf", tags) == 20_000
    assert store.query_points("eaf", tags) == points
    assert store.spool.pending_points == 0
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in msgs) == 1
    assert sum("reachable again" in m for m in msgs) == 1


@pytest.mark.parametrize("in_url", [False, True], ids=["keywords", "in-url"])
def test_credentials_are_sent_never_shown_and_a_refusal_keeps_the_points(
    influxd_factory: Callable[..., InfluxdServer],
    db: str,
    make_store: Callable[..., InfluxStore],
    in_url: bool,
) -> None:
    server = influxd_factory(auth=True)
    admin = "CREATE USER admin WITH PASSWORD 's3 cr3t' WITH ALL PRIVILEGES"
    httpx.post(f"{server.url}/query", data={"q": admin}).raise_for_status()
    host = server.url.removeprefix("http://")

    def login(password: str, spool: str) -> InfluxStore:
        if in_url:  # percent-encoded, with a trailing slash
            return make_store(f"http://admin:{quote(password)}@{host}/", db, spool=spool)
        return make_store(server.url, db, spool=spool, username="admin", password=password)

    points = furnace_points(500)
    wrong = login("n0pe", "wrong")
    wrong.write(points)
    with pytest.raises(FlushTimeout) as info:
        wrong.flush(timeout=1.0)
    assert wrong.spool.pending_points == 500  # kept until the credentials are fixed
    assert "not authorised (HTTP 401)" in wrong.stats.last_error
    shown = f"{info.value} {wrong.stats.last_error} {wrong.http.describe()}"
    assert "n0pe" not in shown and host in shown
    right = login("s3 cr3t", "right")
    right.write(points)
    right.flush()
    assert right.query_points("eaf", {}) == points


def test_a_dropped_database_is_recreated_under_a_large_batch(
    influxd: InfluxdServer,
    db: str,
    make_store: Callable[..., InfluxStore],
) -> None:
    """InfluxDB answers 404 before it reads a large body and closes; the answer still
    counts (the database is created again), not a broken connection retried for ever."""
    rng = random.Random(5)
    tags = {"plant": "p", "furnace": "f", "heat": "h"}
    points = [
        Point("eaf", tags, {f"v{j}": rng.random() for j in range(10)}, T0 + i)
        for i in range(50_000)
    ]  # 12 MB of random floats, sent uncompressed
    store = make_store(influxd.url, db, batch_size=50_000, gzip_level=0)
    store.write(points[:10])
    store.flush()
    httpx.post(f"{influxd.url}/query", data={"q": f'DROP DATABASE "{db}"'}).raise_for_status()
    store.write(points)
    store.flush(timeout=30)
    assert store.count("eaf", tags) == len(points)


def test_unreachable_at_start_then_delivered(
    influxd_factory: Callable[[], InfluxdServer],
    db: str,
    make_store: Callable[..., InfluxStore],
) -> None:
    server = influxd_factory()
    server.stop()
    store = make_store(server.url, db)  # CREATE DATABASE fails: the sender creates it later
    points = furnace_points(3000)
    write_in_chunks(store, points)
    server.start()
    store.flush()
    assert store.query_points("eaf", {}) == points


_CRASHER = textwrap.dedent("""
    import os, signal, sys, threading
    sys.path.insert(0, {repo!r})
    from alchimia.agent.store import InfluxStore
    from tests.integration.test_store_influx import furnace_points
    # No fsync falls due before the crash: only the first write is fsync'd (the first after a
    # quiet stretch), every later one is only handed to the kernel, as between two syncs.
    store = InfluxStore({url!r}, {db!r}, {spool!r}, batch_size=700, flush_interval=0.01,
                        backoff_initial=0.05, backoff_max=0.2, fsync_interval=3600)
    send, stalled = store.http.send, threading.Event()
    def send_until_half(payload, points):
        # The network stalls half way, so the crash always leaves points behind.
        if store.stats.sent_points >= {n} // 2:
            stalled.wait()
        return send(payload, points)
    store.http.send = send_until_half
    points = furnace_points({n})
    for i in range(0, len(points), 500):
        store.write(points[i : i + 500])
    print(store.stats.sent_points, store.spool.pending_points, store.spool.syncs, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no flush, no close: a crash
""")


@pytest.mark.parametrize("server_up", [True, False], ids=["sending", "server-down"])
def test_crashed_agent_replays_its_spool(
    influxd_factory: Callable[[], InfluxdServer],
    db: str,
    tmp_path: Path,
    make_store: Callable[..., InfluxStore],
    server_up: bool,
) -> None:
    server = influxd_factory()
    if not server_up:
        server.stop()
    n = 30_000
    spool = tmp_path / "crash-spool"
    script = _CRASHER.format(repo=str(REPO), url=server.url, db=db, spool=str(spool), n=n)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    sent, pending, syncs = map(int, proc.stdout.split())
    assert syncs == 1  # 59 of the 60 writes were never fsync'd: a crash loses none of them
    if not server_up:
        assert (sent, pending) == (0, n)
        server.start()
    assert pending > 0  # something really was left for the next instance
    store = make_store(server.url, db, spool="crash-spool")
    assert store.spool.pending_points >= pending
    store.flush()
    points = furnace_points(n)
    assert store.count("eaf", dict(points[0].tags)) == n
    assert store.query_points("eaf", {}) == points


def test_full_spool_refuses_with_a_clear_error_and_drops_nothing_accepted(
    influxd_factory: Callable[[], InfluxdServer],
    db: str,
    make_store: Callable[..., InfluxStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = influxd_factory()
    server.stop()
    store = make_store(server.url, db, max_spool_bytes=200_000, segment_bytes=50_000)
    points = furnace_points(5000)
    accepted: list[Point] = []
    refused = 0
    with caplog.at_level(logging.WARNING, logger="alchimia.agent.store.spool"):
        for i in range(0, len(points), 100):
            try:
                store.write(points[i : i + 100])
                accepted += points[i : i + 100]
            except SpoolFullError as exc:
                assert "full" in str(exc)
                refused += 1
    assert accepted and refused  # it filled up, and accepted some before
    assert any("FULL" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    server.start()
    store.flush()
    assert store.query_points("eaf", {}) == accepted


def test_a_4xx_batch_is_moved_aside_with_its_reason(
    influxd: InfluxdServer, db: str, make_store: Callable[..., InfluxStore]
) -> None:
    store = make_store(influxd.url, db, batch_size=5000, flush_interval=60)
    tags = {"plant": "p", "furnace": "f", "heat": "h"}
    store.write([Point("eaf", tags, {"power": 1.5}, T0)])
    store.flush()
    good = [Point("eaf", tags, {"power": i / 3}, T0 + 10 + i) for i in range(1000)]
    bad = [Point("eaf", tags, {"power": 7}, T0 + 5)]  # an integer into a float field
    store.write(good[:600] + bad + good[600:])  # one batch: InfluxDB answers "partial write"
    store.flush()
    rejected = sorted(store.spool.rejected_dir.glob("*.lp"))
    assert len(rejected) == 1
    # Exactly the refused point is set aside, not the 1000 points InfluxDB did store.
    assert rejected[0].read_text() == "eaf,furnace=f,heat=h,plant=p power=7i 1700000000000000005\n"
    reason = json.loads(rejected[0].with_suffix(".reason.json").read_text())
    assert reason["status"] == 400 and "field type conflict" in reason["reason"]
    assert reason["points"] == 1
    assert store.stats.rejected_points == 1
    assert store.query_points("eaf", tags) == [Point("eaf", tags, {"power": 1.5}, T0), *good]
    # The sender goes on with later batches.
    store.write([Point("eaf", tags, {"power": 9.5}, T0 + 5000)])
    assert store.count("eaf", tags) == 1002


def test_a_wholly_refused_batch_is_moved_aside_whole(
    influxd: InfluxdServer, db: str, make_store: Callable[..., InfluxStore]
) -> None:
    store = make_store(influxd.url, db, flush_interval=60)
    tags = {"plant": "p"}
    store.write([Point("m", tags, {"v": "text"}, T0)])
    store.flush()
    bad = [Point("m", tags, {"v": float(i)}, T0 + 1 + i) for i in range(300)]
    store.write(bad)
    store.flush()
    (rejected,) = store.spool.rejected_dir.glob("*.lp")
    assert rejected.read_bytes().count(b"\n") == 300
    assert store.stats.rejected_points == 300
    assert store.count("m", tags) == 1


def test_open_store_picks_the_backend(influxd: InfluxdServer, db: str, tmp_path: Path) -> None:
    influx = open_store(influxd.url, db, spool_dir=tmp_path / "sp", flush_interval=0.1)
    sqlite = open_store(None, db, sqlite_path=tmp_path / "x.db")
    try:
        assert isinstance(influx, InfluxStore)
        points = furnace_points(10)
        for store in (influx, sqlite):
            store.write(points)
            store.flush()
            assert store.query_points("eaf", {"heat": "H0001"}) == points
    finally:
        influx.close()
        sqlite.close()
