"""The install files in deploy/: systemd units (``systemd-analyze verify`` and
``security``), the sysusers file (``systemd-sysusers`` into a scratch root), the compose
stack (``docker-compose config``, which needs no Docker daemon) and the files mounted into
it, checked against what ``alchimia provision`` writes and against each other.

Each tool is real (Debian's ``systemd``, ``docker-compose``, ``prometheus``); the
negative controls show that each check reports the kind of mistake it is there for."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from alchimia.deploy.provision import provision

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
INSTALLED = "/opt/alchimia/venv/bin/alchimia"
UNITS = {"coordinator": "alchimia-coordinator.service", "agent": "alchimia-agent@.service"}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}
ALCHIMIA_SERVICES = {"coordinator", "plant-1", "plant-2"}


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must apt-get install {package}")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


def run(
    *cmd: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
    )


# -- systemd -------------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, list[str]]:
    """``Key`` -> every value it is given (continuation lines joined), any section."""
    out: dict[str, list[str]] = {}
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if pending:
            pending += " " + line.strip()
        elif line.strip() and not line.lstrip().startswith(("#", ";", "[")):
            pending = line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        if pending:
            logical.append(pending)
            pending = ""
    for entry in logical:
        key, _, value = entry.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def installable_units(dest: Path, alchimia: Path, texts: dict[str, str] | None = None) -> None:
    """The units with ExecStart pointing at this checkout's ``alchimia``: verify checks
    that the command exists and is executable, which /opt/alchimia is not here."""
    for name in UNITS.values():
        text = (texts or {}).get(name) or (SYSTEMD / name).read_text()
        assert INSTALLED in text, f"{name}: ExecStart no longer runs {INSTALLED}"
        (dest / name).write_text(text.replace(INSTALLED, str(alchimia)))


def verify(units: Path) -> subprocess.CompletedProcess[str]:
    # A template is verified through an instance; the file is found beside it.
    return run(
        tool("systemd-analyze", "systemd"),
        "verify",
        "--man=no",
        "--generators=no",
        str(units / UNITS["coordinator"]),
        str(units / "alchimia-agent@plant-1.service"),
    )


def checkout_alchimia() -> Path:
    path = Path(sys.executable).parent / "alchimia"
    assert path.is_file() and os.access(path, os.X_OK), f"{path}: run deploy/install.sh first"
    return path


def test_systemd_units_verify_clean(tmp_path: Path) -> None:
    installable_units(tmp_path, checkout_alchimia())
    result = verify(tmp_path)
    # verify exits 0 on an unknown key or a bad value ("..., ignoring"): any output is a
    # finding.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize(
    ("mistake", "reported"),
    [
        (("ProtectSystem=strict", "ProtectSytem=strict"), "Unknown key"),
        (("Restart=on-failure", "Restart=on-failur"), "restart specifier"),
        (
            ("SystemCallFilter=@system-service", "SystemCallFilter=@system-servic"),
            "system call group",
        ),
        (("StateDirectory=alchimia/", "StateDirectory=/var/lib/alchimia/"), "StateDirectory"),
    ],
)
def test_systemd_verify_reports_mistakes(
    tmp_path: Path, mistake: tuple[str, str], reported: str
) -> None:
    """Negative control: the same check on a unit with one typical mistake."""
    old, new = mistake
    texts = {}
    for name in UNITS.values():
        text = (SYSTEMD / name).read_text()
        assert old in text, f"{name} has no {old!r}"
        texts[name] = text.replace(old, new)
    installable_units(tmp_path, checkout_alchimia(), texts)
    result = verify(tmp_path)
    assert reported in result.stdout + result.stderr, result.stdout + result.stderr


def test_systemd_verify_reports_a_missing_command(tmp_path: Path) -> None:
    """What the ExecStart rewrite above is for: verify checks the command exists."""
    for name in UNITS.values():
        shutil.copy(SYSTEMD / name, tmp_path / name)
    result = verify(tmp_path)
    assert result.returncode != 0 and "is not executable" in result.stderr, result.stderr


@pytest.mark.parametrize("role", sorted(UNITS))
def test_systemd_unit_policy(role: str) -> None:
    """Restart, stop, user, state, config, logs and hardening, as docs/OPERATIONS.md says."""
    d = unit_directives((SYSTEMD / UNITS[role]).read_text())
    one = {k: v[-1] for k, v in d.items()}
    # An admin's `stop` exits 0 and must stay stopped; a settings error (2) cannot heal.
    assert one["Restart"] == "on-failure"
    assert "2" in one["RestartPreventExitStatus"].split()
    assert int(one["TimeoutStopSec"]) > 0 and one["Type"] == "exec"
    assert one["User"] == one["Group"] == "alchimia"
    for key, value in HARDENING.items():
        assert one.get(key) == value, f"{key}={one.get(key)!r}, want {value!r}"
    assert "@system-service" in d["SystemCallFilter"]
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # numba/oneDNN generate code at run time: this one would crash the service.
    assert one.get("MemoryDenyWriteExecute", "no") == "no"
    command = one["ExecStart"].split()
    assert command[:2] == [INSTALLED, role]
    flags = dict(zip(command[2::2], command[3::2], strict=True))
    assert flags["--log-format"] == "json"
    assert flags["--config"].startswith("/etc/alchimia/")
    # The state directory systemd creates (and hands to the user) is the one it uses.
    state = one["StateDirectory"]
    assert state.startswith("alchimia/")
    assert flags["--state-dir"] == f"/var/lib/{state}" == one["WorkingDirectory"]
    if role == "agent":  # one config and one writable directory per instance
        assert "%i" in flags["--config"] and state.endswith("/%i")


def test_systemd_units_exposure(tmp_path: Path) -> None:
    """``systemd-analyze security``'s exposure score (0 best, 10 worst) stays <= 2.0."""
    installable_units(tmp_path, checkout_alchimia())
    analyze = tool("systemd-analyze", "systemd")
    for unit in (UNITS["coordinator"], "alchimia-agent@plant-1.service"):
        result = run(
            analyze,
            "security",
            "--offline=yes",
            "--threshold=20",
            "--no-pager",
            str(tmp_path / unit),
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    # Negative control: the same units without their hardening score worse than 2.0.
    bare = {}
    for name in UNITS.values():
        lines = (SYSTEMD / name).read_text().splitlines()
        bare[name] = "\n".join(
            x
            for x in lines
            if x.split("=")[0]
            not in {*HARDENING, "ProtectProc", "SystemCallFilter", "PrivateUsers"}
        )
    installable_units(tmp_path, checkout_alchimia(), bare)
    result = run(
        analyze,
        "security",
        "--offline=yes",
        "--threshold=20",
        "--no-pager",
        str(tmp_path / UNITS["coordinator"]),
    )
    assert result.returncode != 0, result.stdout[-2000:]


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = run(
        tool("systemd-sysusers", "systemd"), f"--root={tmp_path}", str(SYSTEMD / "alchimia.conf")
    )
    # It reports what it creates on stderr; anything else is a finding.
    findings = [x for x in result.stderr.splitlines() if not x.startswith("Creating ")]
    assert result.returncode == 0 and not findings, result.stderr
    users = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
    }
    name, _, uid, _gid, _, home, shell = users["alchimia"]
    assert int(uid) < 1000, "a system user"
    assert home == "/var/lib/alchimia" and shell == "/usr/sbin/nologin"
    assert "alchimia:" in (tmp_path / "etc" / "group").read_text()
    for unit in UNITS.values():
        assert unit_directives((SYSTEMD / unit).read_text())["User"] == [name]


# -- compose -------------------------------------------------------------------------


def compose_config(
    provisioned: Path, compose_file: Path = COMPOSE
) -> subprocess.CompletedProcess[str]:
    return run(
        tool("docker-compose", "docker-compose"),
        "--project-directory",
        str(COMPOSE_DIR),
        "-f",
        str(compose_file),
        "config",
        env={"GRAFANA_ADMIN_PASSWORD": "test-only", "ALCHIMIA_PROVISIONED": str(provisioned)},
    )


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compose federation, provisioned as its README says."""
    out = tmp_path_factory.mktemp("provisioned")
    provision(COMPOSE_DIR / "federation.toml", out)
    return out


@pytest.fixture(scope="module")
def stack(provisioned: Path) -> dict:
    result = compose_config(provisioned)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def host_path(service: dict, container_path: str) -> Path | None:
    """Where a path inside a service's container lies on the host (bind mounts only)."""
    target = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        source, mount, *_ = volume.split(":")
        if not source.startswith("/"):
            continue  # a named volume
        mount_path = PurePosixPath(mount)
        if target == mount_path or mount_path in target.parents:
            return Path(source) / target.relative_to(mount_path)
    return None


def flags(service: dict) -> dict[str, str]:
    command = service["command"]
    return {a: b for a, b in itertools.pairwise(command) if a.startswith("--")}


def published(service: dict) -> set[tuple[int, int]]:
    """(host port, container port) of each published port, in either syntax."""
    out = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.add((int(port["published"]), int(port["target"])))
        else:
            host, container = port.split("/")[0].split(":")[-2:]
            out.add((int(host), int(container)))
    return out


def test_compose_config_is_valid(stack: dict) -> None:
    assert set(stack["services"]) == {
        "mosquitto",
        "influxdb",
        "prometheus",
        "grafana",
        *ALCHIMIA_SERVICES,
    }
    for name in ALCHIMIA_SERVICES:
        service = stack["services"][name]
        assert service["build"]["context"] == str(ROOT)
        assert (ROOT / service["build"]["dockerfile"]).is_file()
        # An admin's `stop` (exit 0) stays stopped, a crash restarts.
        assert service["restart"] == "on-failure"
        assert flags(service)["--log-format"] == "json"


def test_compose_config_reports_mistakes(tmp_path: Path, provisioned: Path) -> None:
    """Negative control: an unknown key, a dangling named volume, a missing variable."""
    text = COMPOSE.read_text()
    for old, new in (
        ("    restart: unless-stopped", "    restrat: unless-stopped"),
        ("- influxdb:/var/lib/influxdb", "- influxdbx:/var/lib/influxdb"),
    ):
        assert old in text
        bad = tmp_path / "compose.yaml"
        bad.write_text(text.replace(old, new))
        result = compose_config(provisioned, bad)
        assert result.returncode != 0, new
    result = run(
        tool("docker-compose", "docker-compose"),
        "-f",
        str(COMPOSE),
        "config",
        "-q",
        env={"GRAFANA_ADMIN_PASSWORD": ""},
    )
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_compose_mounts_what_provisioning_wrote(stack: dict, provisioned: Path) -> None:
    """Every file a provisioned config names is mounted where it says, from the
    provisioned directory; the agents are the federation's, on the broker service."""
    services = stack["services"]
    federation = tomllib.loads((COMPOSE_DIR / "federation.toml").read_text())
    agents = {n for n in ALCHIMIA_SERVICES if services[n]["command"][0] == "agent"}
    assert agents == set(federation["agents"])

    broker = services["mosquitto"]
    conf_in_container = broker["command"][broker["command"].index("-c") + 1]
    conf = host_path(broker, conf_in_container)
    assert conf == provisioned / "mosquitto" / "mosquitto.conf" and conf.is_file()
    listeners = []
    for line in conf.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key in ("cafile", "certfile", "keyfile", "crlfile", "acl_file", "persistence_location"):
            assert (found := host_path(broker, value)) is not None and found.exists(), line
        if key == "listener":
            listeners.append(value.split()[0])
    assert published(broker) == {(int(p), int(p)) for p in listeners}

    for name in ALCHIMIA_SERVICES:
        service = services[name]
        config = host_path(service, flags(service)["--config"])
        assert config is not None and config.is_file(), name
        assert config.parent == provisioned / "identities" / (
            name if name in agents else "coordinator"
        )
        settings = tomllib.loads(config.read_text())
        for key in ("ca_file", "cert_file", "key_file", "model_signing_key", "model_public_key"):
            if key in settings:
                assert (found := host_path(service, settings[key])) and found.is_file(), key
        host, port = re.fullmatch(r"mqtts://([^:]+):(\d+)", settings["broker"]).groups()
        assert host in services and host == "mosquitto" and port in listeners
        assert host in service.get("depends_on", {})
        if name in agents:
            assert settings["agent_id"] == name
            influx = re.fullmatch(r"http://([^:]+):(\d+)", flags(service)["--influx"])
            assert influx and influx.group(1) == "influxdb" and influx.group(2) == "8086"
            assert "influxdb" in service["depends_on"]
        # Named volumes for state, so it outlives the container.
        state = flags(service)["--state-dir"]
        assert any(
            v.split(":")[1] == state and v.split(":")[0] in stack["volumes"]
            for v in service["volumes"]
        ), name

    # The admin bundle in the coordinator's container, for the admin commands.
    admin = host_path(services["coordinator"], "/etc/alchimia/identities/admin/admin.toml")
    assert admin == provisioned / "identities" / "admin" / "admin.toml" and admin.is_file()


def test_prometheus_scrapes_every_service(stack: dict) -> None:
    config_file = COMPOSE_DIR / "prometheus.yml"
    checked = run(tool("promtool", "prometheus"), "check", "config", str(config_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    prometheus = stack["services"]["prometheus"]
    assert host_path(prometheus, "/etc/prometheus/prometheus.yml") == config_file
    config = yaml.safe_load(config_file.read_text())
    targets = {
        t
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for t in group["targets"]
    }
    for name in ALCHIMIA_SERVICES:
        f = flags(stack["services"][name])
        assert f"{name}:{f['--metrics-port']}" in targets, name
        assert f["--metrics-host"] == "0.0.0.0", f"{name}: unreachable from prometheus"
    assert {t.split(":")[0] for t in targets} <= {*stack["services"], "localhost"}
    # The alerting rules: mounted where the config names them, valid, on real metrics.
    for rules in config["rule_files"]:
        mounted = host_path(prometheus, str(PurePosixPath("/etc/prometheus") / rules))
        assert mounted == config_file.parent / rules, rules
        checked = run(tool("promtool", "prometheus"), "check", "rules", str(mounted))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert not unknown_metrics(mounted.read_text()), unknown_metrics(mounted.read_text())


def unknown_metrics(text: str) -> set[str]:
    """``alchimia_*`` names in ``text`` that neither collector exports (a counter's
    samples end in ``_total``; summaries and histograms add ``_sum``, ``_count``, ...)."""
    exported = set()
    for source in ("coordinator/metrics.py", "agent/metrics.py"):
        exported |= set(re.findall(r'"(alchimia_\w+)"', (ROOT / source).read_text()))
    used = set(re.findall(r"\balchimia_\w+", text))
    return {m for m in used if re.sub(r"_(total|sum|count|bucket)$", "", m) not in exported}


def test_unknown_metrics_are_found() -> None:
    """Negative control of the metric-name check above."""
    assert unknown_metrics("alchimia_agents + alchimia_rounds_total") == set()
    assert unknown_metrics("alchimia_round_total + alchimia_agent") == {
        "alchimia_round_total",
        "alchimia_agent",
    }


def test_prometheus_check_reports_mistakes(tmp_path: Path) -> None:
    """Negative control: promtool refuses a misspelt key."""
    bad = tmp_path / "prometheus.yml"
    bad.write_text(
        (COMPOSE_DIR / "prometheus.yml").read_text().replace("static_configs", "static_config", 1)
    )
    assert run(tool("promtool", "prometheus"), "check", "config", str(bad)).returncode != 0


def test_grafana_provisioning_points_at_the_stack(stack: dict) -> None:
    grafana = stack["services"]["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning == COMPOSE_DIR / "grafana" / "provisioning"
    sources = {}
    for f in (provisioning / "datasources").glob("*.yaml"):
        for source in yaml.safe_load(f.read_text())["datasources"]:
            sources[source["type"]] = source
    assert set(sources) == {"prometheus", "influxdb"}
    assert sources["prometheus"]["url"] == "http://prometheus:9090"
    assert sources["influxdb"]["url"] == "http://influxdb:8086"
    # The database the agents write (their default, alchimia) and InfluxDB creates.
    assert (
        sources["influxdb"]["jsonData"]["dbName"]
        == stack["services"]["influxdb"]["environment"]["INFLUXDB_DB"]
        == "alchimia"
    )
    assert not any("--database" in flags(stack["services"][n]) for n in ALCHIMIA_SERVICES)
    providers = [
        p
        for f in (provisioning / "dashboards").glob("*.yaml")
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert len(providers) == 1
    dashboards = host_path(grafana, providers[0]["options"]["path"])
    assert dashboards == COMPOSE_DIR / "grafana" / "dashboards" and dashboards.is_dir()


def test_image_build_inputs() -> None:
    """What the image build needs from the context, and keeps out of it."""
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    assert "COPY . /src" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "deploy/compose/provisioned"} <= set(ignored)
    # No registry host is named: the CPU torch build comes from a wheelhouse or an
    # index the builder passes (see the Dockerfile's header).
    assert not re.search(r"https?://", dockerfile)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    default = re.search(r"^ARG EXTRAS=(\S*)$", dockerfile, re.M).group(1)
    assert all(e in extras for e in default.split(",") if e)
    assert any(r.startswith("torch==") for e in default.split(",") for r in extras.get(e, []))
    # The state directories exist in the image, owned by its user, so that the named
    # volumes mounted on them start writable.
    for state in ("/var/lib/alchimia/coordinator", "/var/lib/alchimia/agent"):
        assert state in dockerfile
