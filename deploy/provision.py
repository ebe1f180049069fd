"""``alchimia provision``: certificates, passwords, ACLs and configs for a secured federation.

Provisioning is re-runnable: the federation file is the source of truth and ``DIR``
accumulates state. A re-run issues what is new and revokes what is marked revoked, and
never touches existing keys and certificates, because they are already installed on
plant gateways that an admin cannot reach in a hurry. Output layout: docs/SECURITY.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pwd
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alchimia.broker.mosquitto_conf import acl_text, bridge_config, secure_config
from alchimia.deploy import pki
from alchimia.deploy.federation import (
    FederationFile,
    FederationFileError,
    PlantBrokerSpec,
    Role,
    load_federation,
)
from alchimia.deploy.passwords import generate_password, hash_password, password_file

STATE_FORMAT = 1
# A bridge has no config of its own: its plant broker's mosquitto.conf holds it.
CONFIG_NAMES: dict[Role, str] = {
    "agent": "agent.toml",
    "coordinator": "coordinator.toml",
    "consumer": "consumer.toml",
    "admin": "admin.toml",
}
# The admin commands read their connection from the coordinator's settings model, which
# has no admin id: admin.toml names it in its usage line (--admin-id) instead.
ID_KEYS: dict[Role, str] = {
    "agent": "agent_id",
    "coordinator": "coordinator_id",
    "consumer": "consumer_id",
}
# The first line of every ready config, and the hint above its broker URL.
_CONFIG_HEADER = "# {role} {name} of federation {federation}; written by `alchimia provision`.\n"
_BROKER_HINT = (
    "# broker: the first of the `hosts` of this identity's broker in the federation file\n"
    "# ([broker], or its [[plant_brokers]] entry). If this machine reaches the broker by\n"
    "# another name, use one of those `hosts` here (the broker's certificate names them),\n"
    "# or add the name there and re-provision.\n"
)
_ADMIN_USAGE = (
    "# Use: alchimia coordinator --config THIS_FILE rollback VERSION "
    "--admin-id {name}\n# (or pause, resume, stop in place of rollback VERSION)\n"
)


class ProvisionError(RuntimeError):
    """Provisioning cannot go on without the admin deciding something; says what."""


@dataclass
class ProvisionReport:
    """What one run did, for the admin to act on (e.g. ship new bundles, restart mosquitto)."""

    out_dir: Path
    federation: str
    issued: list[str] = field(default_factory=list)  # new identities: ship their bundles
    reissued: list[str] = field(default_factory=list)  # revoked before, now with a new cert
    revoked: list[str] = field(default_factory=list)  # revoked by this run
    unchanged: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)  # files created or changed
    warnings: list[str] = field(default_factory=list)

    @property
    def broker_config(self) -> Path:
        return self.out_dir / "mosquitto" / "mosquitto.conf"

    @property
    def broker_changed(self) -> bool:
        """True when mosquitto must be restarted to apply this run (CRL, ACL, passwords)."""
        broker_dir = self.out_dir / "mosquitto"
        return any(broker_dir in p.parents for p in self.written)

    @property
    def plant_brokers_changed(self) -> list[Path]:
        """Configs of the plant brokers to restart (their files changed in this run)."""
        root = self.out_dir / "plant-brokers"
        changed = {p.relative_to(root).parts[0] for p in self.written if root in p.parents}
        return [root / name / "mosquitto.conf" for name in sorted(changed)]

    def summary(self) -> str:
        lines = [f"federation {self.federation}: provisioned in {self.out_dir}"]
        for label, names in (
            ("issued", self.issued),
            ("re-issued", self.reissued),
            ("revoked", self.revoked),
            ("unchanged", self.unchanged),
        ):
            if names:
                lines.append(f"  {label}: {', '.join(names)}")
        lines.append(f"  {len(self.written)} file(s) written")
        if self.broker_changed:
            lines.append(f"  broker files changed: restart mosquitto -c {self.broker_config}")
        lines += [
            f"  plant broker files changed: restart mosquitto -c {conf}"
            for conf in self.plant_brokers_changed
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# -- the state file -------------------------------------------------------------------


@dataclass
class _Identity:
    role: Role
    serial: int | None = None  # current certificate; None if revoked before being issued
    revoked: bool = False
    password_hash: str | None = None


@dataclass
class _State:
    federation: str
    server_names: list[str] = field(default_factory=list)
    identities: dict[str, _Identity] = field(default_factory=dict)
    # (serial, identity, revocation time): every certificate ever revoked, for the CRL.
    revocations: list[tuple[int, str, dt.datetime]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> _State | None:
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        if raw.get("format") != STATE_FORMAT:
            raise ProvisionError(f"{path} has an unknown format {raw.get('format')!r}")
        return cls(
            federation=raw["federation"],
            server_names=list(raw["server_names"]),
            identities={
                name: _Identity(
                    role=v["role"],
                    serial=None if v["serial"] is None else int(v["serial"], 16),
                    revoked=v["revoked"],
                    password_hash=v.get("password_hash"),
                )
                for name, v in raw["identities"].items()
            },
            revocations=[
                (int(r["serial"], 16), r["identity"], dt.datetime.fromisoformat(r["revoked_at"]))
                for r in raw["revocations"]
            ],
        )

    def dump(self) -> bytes:
        # Serials as hex strings: they are 159-bit integers, beyond what many JSON readers keep.
        raw: dict[str, Any] = {
            "format": STATE_FORMAT,
            "federation": self.federation,
            "server_names": self.server_names,
            "identities": {
                name: {
                    "role": i.role,
                    "serial": None if i.serial is None else f"{i.serial:x}",
                    "revoked": i.revoked,
                    "password_hash": i.password_hash,
                }
                for name, i in sorted(self.identities.items())
            },
            "revocations": [
                {"serial": f"{s:x}", "identity": n, "revoked_at": t.isoformat()}
                for s, n, t in self.revocations
            ],
        }
        return (json.dumps(raw, indent=2) + "\n").encode()


# -- writing files --------------------------------------------------------------------


class _Writer:
    """Writes a file only when its bytes change, so re-runs leave installed files alone."""

    def __init__(self, report: ProvisionReport) -> None:
        self.report = report

    def put(self, path: Path, data: bytes, *, private: bool) -> None:
        mode = 0o600 if private else 0o644
        if path.exists() and path.read_bytes() == data:
            if path.stat().st_mode & 0o777 != mode:
                os.chmod(path, mode)
            return
        (pki.write_private if private else pki.write_public)(path, data)
        if path not in self.report.written:
            self.report.written.append(path)

    def mkdir(self, path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)


def _toml_value(value: str | Path) -> str:
    # A JSON string without ASCII escaping is a valid TOML basic string.
    return json.dumps(str(value), ensure_ascii=False)


def _broker_url(host: str, port: int) -> str:
    return f"mqtts://[{host}]:{port}" if ":" in host else f"mqtts://{host}:{port}"


# -- the run --------------------------------------------------------------------------


def provision(config_path: Path, out_dir: Path) -> ProvisionReport:  # noqa: C901
    """Create or update the federation's PKI, broker config and identity bundles in ``out_dir``.

    Raises FederationFileError for a bad federation file and ProvisionError when the
    federation file contradicts what ``out_dir`` already holds (another federation, an
    identity that vanished without being revoked, a role change). Restart mosquitto when
    ``report.broker_changed``: it reads the CRL only at start.
    """
    cfg = load_federation(config_path)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = ProvisionReport(out_dir=out, federation=cfg.federation)
    w = _Writer(report)
    state_path = out / "state.json"
    state = _State.load(state_path)
    if state is None:
        if (out / "ca" / "ca.key").exists():
            raise ProvisionError(
                f"{out} holds a CA but no state.json: restore state.json "
                "or provision into an empty directory"
            )
        state = _State(federation=cfg.federation)
    elif state.federation != cfg.federation:
        raise ProvisionError(
            f"{out} belongs to federation {state.federation!r}, not "
            f"{cfg.federation!r}: use another output directory"
        )
    wanted = cfg.identities()
    for name in cfg.unlisted_revoked():
        if name not in state.identities:
            # Not a silent no-op: a typo here would leave the real identity trusted.
            raise ProvisionError(
                f"revoked identity {name!r} is neither listed nor was it "
                "ever provisioned here: check the spelling"
            )
        wanted[name] = (state.identities[name].role, True)
    _check_identities(wanted, state)

    for sub, mode in (
        ("ca", 0o700),
        ("signing", 0o700),
        ("identities", 0o755),
        ("mosquitto", 0o755),
        ("mosquitto/data", 0o755),
    ):
        w.mkdir(out / sub, mode)
    if cfg.plant_brokers:
        w.mkdir(out / "plant-brokers", 0o755)

    ca = _certificate_authority(cfg, out, w)
    w.put(state_path, state.dump(), private=True)  # a CA never exists without its state
    signing_key = _signing_key(out, w)
    _server_certificate(cfg.broker.hosts, cfg, ca, out / "mosquitto", w)
    state.server_names = list(cfg.broker.hosts)
    _check_sizes_and_hosts(cfg, report)

    needs_passwords = cfg.auth == "passwords" or cfg.broker.plain_port is not None
    now = pki.utcnow().replace(microsecond=0)
    for name, (role, revoked) in sorted(wanted.items()):
        entry = state.identities.get(name)
        if revoked:
            if entry is None:
                state.identities[name] = _Identity(role=role, revoked=True)
                report.revoked.append(name)
            elif not entry.revoked:
                if entry.serial is not None:
                    state.revocations.append((entry.serial, name, now))
                entry.revoked, entry.password_hash = True, None
                report.revoked.append(name)
            else:
                report.unchanged.append(name)
            continue
        if entry is None or entry.revoked:
            entry = _issue(name, role, ca, cfg, out, w)
            (report.issued if name not in state.identities else report.reissued).append(name)
            state.identities[name] = entry
        else:
            report.unchanged.append(name)
        _identity_files(name, entry, cfg, out, w, signing_key, needs_passwords, report)

    _crl(cfg, state, ca, out, w)
    _broker_files(cfg, state, out, w, needs_passwords)
    for plant in cfg.plant_brokers:
        if not state.identities[plant.id].revoked:
            _plant_broker_files(plant, cfg, state, ca, out, w, report)
    w.put(state_path, state.dump(), private=True)
    _chown_broker_files(cfg, out, report)
    return report


def _check_identities(wanted: dict[str, tuple[Role, bool]], state: _State) -> None:
    for name, known in state.identities.items():
        if name not in wanted:
            if known.revoked:
                continue
            raise ProvisionError(
                f"identity {name!r} was provisioned before and is missing from the "
                f"federation file: list it in `revoked` to retire it"
            )
        if wanted[name][0] != known.role:
            raise ProvisionError(
                f"identity {name!r} was provisioned as {known.role}, now listed as "
                f"{wanted[name][0]}: revoke it and give the new role another id"
            )


def _certificate_authority(cfg: FederationFile, out: Path, w: _Writer) -> pki.CertificateAuthority:
    key_file, cert_file = out / "ca" / "ca.key", out / "ca" / "ca.pem"
    if key_file.exists() and cert_file.exists():
        return pki.CertificateAuthority.load(key_file, cert_file)
    if key_file.exists() or cert_file.exists():
        raise ProvisionError(
            f"only one of {key_file} and {cert_file} exists: restore the "
            "other (re-creating the CA would invalidate every identity)"
        )
    ca = pki.CertificateAuthority.create(cfg.federation, cfg.pki.ca_days)
    w.put(key_file, pki.key_pem(ca.key), private=True)
    w.put(cert_file, pki.cert_pem(ca.cert), private=False)
    return ca


def _signing_key(out: Path, w: _Writer) -> bytes:
    key_file, pub_file = out / "signing/model_signing.key", out / "signing/model_signing.pub"
    if key_file.exists():
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ProvisionError(f"{key_file} is not an Ed25519 private key")
    else:
        key = pki.new_signing_key()
        w.put(key_file, pki.key_pem(key), private=True)
    w.put(pub_file, pki.public_pem(key), private=False)
    return key_file.read_bytes()


def _server_certificate(
    names: list[str],
    cfg: FederationFile,
    ca: pki.CertificateAuthority,
    broker_dir: Path,
    w: _Writer,
) -> None:
    """A broker's key and certificate (SANs = ``names``), and the CA beside them."""
    key_file, cert_file = broker_dir / "server.key", broker_dir / "server.pem"
    if key_file.exists():
        key = pki.load_key(key_file)
    else:
        key = pki.new_key()
        w.put(key_file, pki.key_pem(key), private=True)
    current = pki.load_cert(cert_file) if cert_file.exists() else None
    # Re-issue only when the broker's names change; the key stays, so nothing else moves.
    if current is None or pki.certificate_sans(current) != names:
        cert = ca.issue("alchimia broker", key, days=cfg.pki.cert_days, server_names=names)
        w.put(cert_file, pki.cert_pem(cert), private=False)
    w.put(broker_dir / "ca.pem", pki.cert_pem(ca.cert), private=False)


def _check_sizes_and_hosts(cfg: FederationFile, report: ProvisionReport) -> None:
    limit = cfg.sizing(0).message_size_limit
    if limit < cfg.model_message_bytes:
        report.warnings.append(
            f"message_size_limit {limit} is below model_message_bytes "
            f"{cfg.model_message_bytes}: the brokers would drop every model"
        )
    for host in (cfg.broker.hosts[0], *(p.hosts[0] for p in cfg.plant_brokers)):
        if host == "example" or host.endswith(".example"):
            report.warnings.append(
                f"broker host {host!r} is a placeholder (.example): its clients' configs "
                "point there; put the broker's real name first in its `hosts` and re-run"
            )


def _bundle(out: Path, name: str, role: Role) -> Path:
    """An identity's directory; a bridge's is its plant broker's bundle, which uses it."""
    return out / ("plant-brokers" if role == "bridge" else "identities") / name


def _issue(
    name: str, role: Role, ca: pki.CertificateAuthority, cfg: FederationFile, out: Path, w: _Writer
) -> _Identity:
    bundle = _bundle(out, name, role)
    w.mkdir(bundle, 0o700)
    key = pki.new_key()
    cert = ca.issue(name, key, days=cfg.pki.cert_days)
    w.put(bundle / f"{name}.key", pki.key_pem(key), private=True)
    w.put(bundle / f"{name}.pem", pki.cert_pem(cert), private=False)
    # A new password too: a re-issued identity must not keep the revoked one's login.
    (bundle / "password").unlink(missing_ok=True)
    return _Identity(role=role, serial=cert.serial_number)


def _identity_files(
    name: str,
    entry: _Identity,
    cfg: FederationFile,
    out: Path,
    w: _Writer,
    signing_key: bytes,
    needs_passwords: bool,
    report: ProvisionReport,
) -> None:
    bundle = _bundle(out, name, entry.role)
    w.mkdir(bundle, 0o700)
    w.put(bundle / "ca.pem", (out / "ca" / "ca.pem").read_bytes(), private=False)
    signing_pub = (out / "signing" / "model_signing.pub").read_bytes()
    if entry.role == "coordinator":
        w.put(bundle / "model_signing.key", signing_key, private=True)
    elif entry.role in ("agent", "consumer"):
        w.put(bundle / "model_signing.pub", signing_pub, private=False)
    for suffix in (".key", ".pem"):
        if not (bundle / f"{name}{suffix}").exists():
            report.warnings.append(
                f"{bundle / (name + suffix)} is missing; it is never re-created (that would "
                f"leave two valid certificates): restore it, or revoke {name} and re-issue"
            )

    password: str | None = None
    password_path = bundle / "password"
    if needs_passwords:
        if password_path.exists():
            password = password_path.read_text().strip()
        elif entry.password_hash is None:
            password = generate_password()
            w.put(password_path, (password + "\n").encode(), private=True)
        else:
            report.warnings.append(
                f"{password_path} is missing; its hash stays in the broker's "
                f"password file, but {name}'s config cannot be rendered"
            )
        if password is not None and entry.password_hash is None:
            entry.password_hash = hash_password(password)
    if entry.role == "bridge":
        return  # its config is its plant broker's mosquitto.conf (_plant_broker_files)

    root = (cfg.identities_install_dir or out / "identities") / name
    listener = (cfg.plant_broker_of(name) if entry.role == "agent" else None) or cfg.broker
    values: list[tuple[str, str | Path]] = [
        ("broker", _broker_url(listener.hosts[0], listener.tls_port)),
        ("federation", cfg.federation),
        *([(ID_KEYS[entry.role], name)] if entry.role in ID_KEYS else []),
    ]
    if cfg.auth == "passwords":
        if password is None:
            return
        values += [("username", name), ("password", password)]
    values += [
        ("ca_file", root / "ca.pem"),
        ("cert_file", root / f"{name}.pem"),
        ("key_file", root / f"{name}.key"),
    ]
    if entry.role == "coordinator":
        values.append(("model_signing_key", root / "model_signing.key"))
    elif entry.role in ("agent", "consumer"):
        values.append(("model_public_key", root / "model_signing.pub"))
    text = _CONFIG_HEADER.format(role=entry.role, name=name, federation=cfg.federation)
    text += (_ADMIN_USAGE.format(name=name) if entry.role == "admin" else "") + _BROKER_HINT
    text += "".join(f"{k} = {_toml_value(v)}\n" for k, v in values)
    # Private in password mode (it holds the password); kept private always, for one rule.
    w.put(bundle / CONFIG_NAMES[entry.role], text.encode(), private=True)


def _crl(
    cfg: FederationFile, state: _State, ca: pki.CertificateAuthority, out: Path, w: _Writer
) -> None:
    crl_file = out / "ca" / "crl.pem"
    serials = {s for s, _, _ in state.revocations}
    # ECDSA signatures differ on every signing: re-sign only when the list changes.
    if not crl_file.exists() or pki.crl_serials(crl_file) != serials:
        crl = ca.crl([(s, t) for s, _, t in state.revocations], days=cfg.pki.ca_days)
        w.put(crl_file, crl.public_bytes(serialization.Encoding.PEM), private=False)
    w.put(out / "mosquitto" / "crl.pem", crl_file.read_bytes(), private=False)


def _broker_files(
    cfg: FederationFile, state: _State, out: Path, w: _Writer, needs_passwords: bool
) -> None:
    broker = out / "mosquitto"
    root = cfg.broker.install_dir or broker
    active: dict[Role, list[str]] = {
        r: [] for r in ("coordinator", "admin", "agent", "consumer", "bridge")
    }
    for name, entry in state.identities.items():
        if not entry.revoked:
            active[entry.role].append(name)
    bridges = {
        p.id: _active(p.agents, state) for p in cfg.plant_brokers if p.id in active["bridge"]
    }
    w.put(
        broker / "acl",
        acl_text(
            cfg.federation,
            coordinators=active["coordinator"],
            admins=active["admin"],
            agents=active["agent"],
            consumers=active["consumer"],
            bridges=bridges,
        ).encode(),
        private=True,
    )
    if needs_passwords:
        hashes = {
            n: e.password_hash
            for n, e in state.identities.items()
            if not e.revoked and e.password_hash is not None
        }
        w.put(broker / "passwd", password_file(hashes).encode(), private=True)
    conf = secure_config(
        tls_port=cfg.broker.tls_port,
        tls_bind=cfg.broker.tls_bind,
        plain_port=cfg.broker.plain_port,
        ca_file=root / "ca.pem",
        cert_file=root / "server.pem",
        key_file=root / "server.key",
        crl_file=root / "crl.pem",
        acl_file=root / "acl",
        data_dir=root / "data",
        password_file=root / "passwd" if needs_passwords else None,
        require_certificate=cfg.auth == "certificates",
        # Every agent reaches the coordinator through this broker, bridged or not.
        sizing=cfg.sizing(len(active["agent"])),
        user=cfg.broker.user,
    )
    w.put(broker / "mosquitto.conf", conf.encode(), private=False)


def _active(names: list[str], state: _State) -> list[str]:
    return [n for n in names if not state.identities[n].revoked]


def _plant_broker_files(
    plant: PlantBrokerSpec,
    cfg: FederationFile,
    state: _State,
    ca: pki.CertificateAuthority,
    out: Path,
    w: _Writer,
    report: ProvisionReport,
) -> None:
    """A plant broker's bundle: its listener for its agents, and its bridge to the centre."""
    bundle = _bundle(out, plant.id, "bridge")
    root = plant.install_dir or bundle
    w.mkdir(bundle / "data", 0o755)
    _server_certificate(plant.hosts, cfg, ca, bundle, w)
    w.put(bundle / "crl.pem", (out / "ca" / "crl.pem").read_bytes(), private=False)
    agents = _active(plant.agents, state)
    w.put(bundle / "acl", acl_text(cfg.federation, agents=agents).encode(), private=True)
    passwords = cfg.auth == "passwords"
    bridge_password: str | None = None
    if passwords:
        hashes = {a: h for a in agents if (h := state.identities[a].password_hash) is not None}
        w.put(bundle / "passwd", password_file(hashes).encode(), private=True)
        if not (bundle / "password").exists():
            report.warnings.append(
                f"{bundle / 'mosquitto.conf'} not written: the bridge's password file is missing"
            )
            return
        bridge_password = (bundle / "password").read_text().strip()
    conf = secure_config(
        tls_port=plant.tls_port,
        tls_bind=plant.tls_bind,
        ca_file=root / "ca.pem",
        cert_file=root / "server.pem",
        key_file=root / "server.key",
        crl_file=root / "crl.pem",
        acl_file=root / "acl",
        data_dir=root / "data",
        password_file=root / "passwd" if passwords else None,
        require_certificate=not passwords,
        sizing=cfg.sizing(len(agents)),
        user=cfg.broker.user,
    )
    conf += "\n" + bridge_config(
        cfg.federation,
        bridge_id=plant.id,
        agents=agents,
        host=cfg.broker.hosts[0],
        port=cfg.broker.tls_port,
        ca_file=root / "ca.pem",
        cert_file=None if passwords else root / f"{plant.id}.pem",
        key_file=None if passwords else root / f"{plant.id}.key",
        password=bridge_password,
    )
    # Private: in password mode it holds the bridge's password.
    w.put(bundle / "mosquitto.conf", conf.encode(), private=True)


def _chown_broker_files(cfg: FederationFile, out: Path, report: ProvisionReport) -> None:
    """Hand the brokers' secrets to their service user: mosquitto drops root before reading
    them (and needs to write its persistence file in data/)."""
    if os.geteuid() != 0 or cfg.broker.user == "root":
        return
    try:
        user = pwd.getpwnam(cfg.broker.user)
    except KeyError:
        report.warnings.append(
            f"user {cfg.broker.user!r} does not exist here: chown "
            f"{out / 'mosquitto'} (and plant-brokers/*) to the broker's "
            "user where it runs"
        )
        return
    broker = out / "mosquitto"
    paths = [broker / n for n in ("data", "server.key", "acl", "passwd")]
    for plant in cfg.plant_brokers:
        bundle = _bundle(out, plant.id, "bridge")
        paths += [
            bundle,
            *(
                bundle / n
                for n in (
                    "data",
                    "server.key",
                    "acl",
                    "passwd",
                    "mosquitto.conf",
                    f"{plant.id}.key",
                    "password",
                )
            ),
        ]
    for path in paths:
        if path.exists():
            os.chown(path, user.pw_uid, user.pw_gid)


# -- command line ---------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``alchimia provision``."""
    parser.add_argument(
        "--config",
        required=True,
        type=Path,
        metavar="FEDERATION_FILE",
        help="federation file (TOML), see deploy/federation.example.toml",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output directory; re-use it for later runs (it keeps the CA)",
    )


def run(args: argparse.Namespace) -> int:
    """Provision and print what changed; exit code 2 when the admin must fix something."""
    try:
        report = provision(args.config, args.out)
    except (FederationFileError, ProvisionError) as exc:
        print(f"alchimia provision: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alchimia provision", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
