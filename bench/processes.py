"""The processes a benchmark runs against: a real Mosquitto and an ``alchimia coordinator``
(``bench/bench_swarm.py``, ``bench/bench_coordinator_footprint.py``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from alchimia.broker.embedded import free_port
from alchimia.broker.mosquitto_conf import BrokerSizing, plain_config


def start_mosquitto(
    work: Path,
    *,
    persistence: bool = False,
    sizing: BrokerSizing | None = None,
    log: bool = False,
) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto on a free loopback port with ``plain_config`` written under ``work``, its
    output in ``work/mosquitto.log`` with ``log`` (else dropped); returns it once it
    accepts connections, with its port."""
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(plain_config(port, work, persistence=persistence, sizing=sizing))
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    out = (work / "mosquitto.log").open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=out)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def start_coordinator(
    port: int, work: Path, federation: str, *args: str
) -> subprocess.Popen[bytes]:
    """``python -m alchimia coordinator`` on the broker at ``port``, its state in
    ``work/state``, its output in ``work/coordinator.log``, with ``args`` after the rest."""
    log = (work / "coordinator.log").open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "alchimia",
            "coordinator",
            "--broker",
            f"mqtt://127.0.0.1:{port}",
            "--federation",
            federation,
            "--state-dir",
            str(work / "state"),
            *args,
        ],
        stdout=log,
        stderr=log,
    )


def stop_processes(coordinator: subprocess.Popen[bytes], broker: subprocess.Popen[bytes]) -> None:
    """Terminate the coordinator (killed after 30 s), then the broker."""
    coordinator.terminate()
    try:
        coordinator.wait(30)
    except subprocess.TimeoutExpired:
        coordinator.kill()
    broker.terminate()
    broker.wait(10)
