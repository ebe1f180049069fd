"""Provisioning output without a broker: layout, modes, re-runs, revocation, ACL, hashes."""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import pwd
import re
import ssl
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

from alchimia.broker.mosquitto_conf import (
    MAX_MESSAGE_SIZE_LIMIT,
    MESSAGES_PER_AGENT,
    MOSQUITTO_MAX_QUEUED_MESSAGES,
    SMALL_MESSAGE_BYTES,
    acl_text,
    bridge_config,
    broker_sizing,
    plain_config,
    secure_config,
)
from alchimia.broker.tls import client_tls_context, explain_tls_error
from alchimia.coordinator.settings import CoordinatorSettings
from alchimia.deploy import provision as prov
from alchimia.deploy.federation import FederationFileError
from alchimia.deploy.passwords import hash_password, password_file, verify_password
from alchimia.deploy.pki import certificate_sans as pki_sans
from alchimia.deploy.provision import ProvisionError, provision

AGENT_KEYS = {
    "broker",
    "federation",
    "agent_id",
    "ca_file",
    "cert_file",
    "key_file",
    "model_public_key",
}


def fed_file(
    path: Path,
    *,
    auth: str = "certificates",
    agents: str = '["plant-1", "plant-2"]',
    consumers: str = '["hmi-1"]',
    revoked: str = "[]",
    extra: str = "",
    federation: str = "steel",
    hosts: str = '["broker.steel.example", "10.0.0.5"]',
    coordinator: str = '"coordinator"',
    tail: str = "",
) -> Path:
    """A federation file; ``tail`` goes after ``[broker]``'s keys (more of them, or
    ``[[plant_brokers]]`` tables)."""
    path.write_text(f"""
federation = "{federation}"
auth = "{auth}"
message_size_limit = 1048576
coordinator = {coordinator}
agents = {agents}
consumers = {consumers}
revoked = {revoked}
{extra}
[broker]
hosts = {hosts}
tls_port = 8883
{tail}
""")
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def test_layout_and_file_modes(tmp_path: Path, out: Path) -> None:
    report = provision(fed_file(tmp_path / "f.toml"), out)
    assert sorted(report.issued) == ["coordinator", "hmi-1", "plant-1", "plant-2"]
    private = [
        "ca/ca.key",
        "signing/model_signing.key",
        "mosquitto/server.key",
        "mosquitto/acl",
        "state.json",
        "identities/plant-1/plant-1.key",
        "identities/plant-1/agent.toml",
        "identities/coordinator/coordinator.key",
        "identities/coordinator/model_signing.key",
        "identities/hmi-1/hmi-1.key",
        "identities/hmi-1/consumer.toml",
        "identities/coordinator/coordinator.toml",
    ]
    public = [
        "ca/ca.pem",
        "ca/crl.pem",
        "signing/model_signing.pub",
        "mosquitto/ca.pem",
        "mosquitto/crl.pem",
        "mosquitto/server.pem",
        "mosquitto/mosquitto.conf",
        "identities/plant-1/ca.pem",
        "identities/plant-1/plant-1.pem",
        "identities/plant-1/model_signing.pub",
        "identities/hmi-1/model_signing.pub",
    ]
    for rel in private:
        assert mode(out / rel) == 0o600, rel
    for rel in public:
        assert mode(out / rel) == 0o644, rel
    assert mode(out / "ca") == 0o700
    assert mode(out / "identities" / "plant-1") == 0o700
    assert (out / "mosquitto" / "data").is_dir()
    # Certificate mode without a plain listener: no passwords anywhere.
    assert not (out / "mosquitto" / "passwd").exists()
    assert not (out / "identities" / "plant-1" / "password").exists()
    # The signing key goes to the coordinator only.
    assert not (out / "identities" / "plant-1" / "model_signing.key").exists()
    assert not (out / "identities" / "coordinator" / "model_signing.pub").exists()
    assert (out / "identities/coordinator/model_signing.key").read_bytes() == (
        out / "signing/model_signing.key"
    ).read_bytes()


def test_certificates_and_keys(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml"), out)
    ca = x509.load_pem_x509_certificate((out / "ca/ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    server = x509.load_pem_x509_certificate((out / "mosquitto/server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["broker.steel.example"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    for name in ("plant-1", "coordinator", "hmi-1"):
        cert = x509.load_pem_x509_certificate(
            (out / "identities" / name / f"{name}.pem").read_bytes()
        )
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        # The key in the bundle belongs to the certificate (ssl checks the pair).
        b = out / "identities" / name
        client_tls_context(b / "ca.pem", b / f"{name}.pem", b / f"{name}.key")
    signing = (out / "signing/model_signing.key").read_bytes()
    assert b"BEGIN PRIVATE KEY" in signing  # PKCS8
    assert isinstance(load_pem_private_key(signing, None), ed25519.Ed25519PrivateKey)


def test_identity_configs(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml"), out)
    agent = tomllib.loads((out / "identities/plant-1/agent.toml").read_text())
    assert set(agent) == AGENT_KEYS
    assert agent["broker"] == "mqtts://broker.steel.example:8883"
    assert agent["federation"] == "steel" and agent["agent_id"] == "plant-1"
    for key in ("ca_file", "cert_file", "key_file", "model_public_key"):
        assert Path(agent[key]).is_absolute() and Path(agent[key]).is_file(), key
    coord = tomllib.loads((out / "identities/coordinator/coordinator.toml").read_text())
    assert coord["coordinator_id"] == "coordinator"
    assert Path(coord["model_signing_key"]).is_file() and "model_public_key" not in coord
    consumer = tomllib.loads((out / "identities/hmi-1/consumer.toml").read_text())
    assert consumer["consumer_id"] == "hmi-1" and "username" not in consumer


def test_password_mode(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml", auth="passwords"), out)
    agent = tomllib.loads((out / "identities/plant-1/agent.toml").read_text())
    assert set(agent) == AGENT_KEYS | {"username", "password"}
    password = (out / "identities/plant-1/password").read_text().strip()
    assert agent["username"] == "plant-1" and agent["password"] == password
    assert mode(out / "identities/plant-1/password") == 0o600
    entries = dict(
        line.split(":", 1) for line in (out / "mosquitto/passwd").read_text().splitlines()
    )
    assert sorted(entries) == ["coordinator", "hmi-1", "plant-1", "plant-2"]
    assert verify_password(password, entries["plant-1"])
    assert not verify_password(password, entries["plant-2"])
    conf = (out / "mosquitto/mosquitto.conf").read_text()
    assert f"password_file {out / 'mosquitto/passwd'}" in conf
    assert "require_certificate false" in conf and "use_identity_as_username false" in conf


def test_broker_config(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml"), out)
    conf = (out / "mosquitto/mosquitto.conf").read_text().splitlines()
    for line in (
        "per_listener_settings false",
        "allow_anonymous false",
        "listener 8883",
        "require_certificate true",
        "use_identity_as_username true",
        f"cafile {out}/mosquitto/ca.pem",
        f"certfile {out}/mosquitto/server.pem",
        f"keyfile {out}/mosquitto/server.key",
        f"crlfile {out}/mosquitto/crl.pem",
        f"acl_file {out}/mosquitto/acl",
        "message_size_limit 1048576",
        f"persistence_location {out}/mosquitto/data/",
        "user mosquitto",
    ):
        assert line in conf, line
    assert not any(line.startswith("password_file") for line in conf)
    # Global options come before the first listener, or they would bind to it.
    assert conf.index("per_listener_settings false") < conf.index("listener 8883")


def test_rerun_leaves_every_file_byte_identical(tmp_path: Path, out: Path) -> None:
    config = fed_file(tmp_path / "f.toml", auth="passwords")
    provision(config, out)
    before = snapshot(out)
    report = provision(config, out)
    assert report.written == [] and report.issued == [] and report.revoked == []
    assert snapshot(out) == before


def test_adding_an_identity_keeps_existing_files(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml"), out)
    before = snapshot(out)
    report = provision(
        fed_file(tmp_path / "f.toml", agents='["plant-1", "plant-2", "plant-3"]'), out
    )
    assert report.issued == ["plant-3"]
    after = snapshot(out)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"mosquitto/acl", "state.json"}
    assert "user plant-3" in after["mosquitto/acl"].decode()
    assert (out / "identities/plant-3/plant-3.key").exists()


def test_revocation_adds_the_serial_to_the_crl(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml", auth="passwords"), out)
    before = snapshot(out)
    ca = x509.load_pem_x509_certificate((out / "ca/ca.pem").read_bytes())
    crl = x509.load_pem_x509_crl((out / "ca/crl.pem").read_bytes())
    assert len(crl) == 0 and crl.is_signature_valid(ca.public_key())
    serial = x509.load_pem_x509_certificate(
        (out / "identities/plant-2/plant-2.pem").read_bytes()
    ).serial_number

    report = provision(fed_file(tmp_path / "f.toml", auth="passwords", revoked='["plant-2"]'), out)
    assert report.revoked == ["plant-2"] and report.broker_changed
    crl = x509.load_pem_x509_crl((out / "ca/crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key())
    assert [r.serial_number for r in crl] == [serial]
    assert (out / "mosquitto/crl.pem").read_bytes() == (out / "ca/crl.pem").read_bytes()
    acl = (out / "mosquitto/acl").read_text()
    assert "user plant-2" not in acl and "user plant-1" in acl
    assert "plant-2:" not in (out / "mosquitto/passwd").read_text()
    after = snapshot(out)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {
        "ca/crl.pem",
        "mosquitto/crl.pem",
        "mosquitto/acl",
        "mosquitto/passwd",
        "state.json",
    }


def test_reinstating_a_revoked_identity_issues_a_new_certificate(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml"), out)
    old = (out / "identities/plant-2/plant-2.pem").read_bytes()
    provision(
        fed_file(tmp_path / "f.toml", agents='["plant-1", {id = "plant-2", revoked = true}]'), out
    )
    report = provision(fed_file(tmp_path / "f.toml"), out)
    assert report.reissued == ["plant-2"]
    new = (out / "identities/plant-2/plant-2.pem").read_bytes()
    assert new != old
    old_serial = x509.load_pem_x509_certificate(old).serial_number
    crl = x509.load_pem_x509_crl((out / "ca/crl.pem").read_bytes())
    assert [r.serial_number for r in crl] == [old_serial]  # the old one stays revoked


def test_retired_identity_may_leave_the_lists_once_revoked(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml"), out)
    with pytest.raises(ProvisionError, match="list it in `revoked`"):
        provision(fed_file(tmp_path / "f.toml", agents='["plant-1"]'), out)
    report = provision(
        fed_file(tmp_path / "f.toml", agents='["plant-1"]', revoked='["plant-2"]'), out
    )
    assert report.revoked == ["plant-2"]
    report = provision(fed_file(tmp_path / "f.toml", agents='["plant-1"]'), out)
    assert report.revoked == [] and report.written == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"revoked": '["plant-9"]'}, "check the spelling"),
        ({"agents": '["plant-1", "plant-1"]'}, "listed twice"),
        ({"agents": '["plant/1"]'}, "invalid identity id"),
        ({"hosts": '["mqtts://broker:8883"]'}, "invalid broker host"),
        ({"hosts": "[]"}, "broker.hosts"),
        ({"extra": "colour = 1"}, "colour"),
    ],
)
def test_bad_federation_files_are_refused(
    tmp_path: Path, out: Path, kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises((FederationFileError, ProvisionError), match=message):
        provision(fed_file(tmp_path / "f.toml", **kwargs), out)


def test_out_dir_of_another_federation_is_refused(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml"), out)
    with pytest.raises(ProvisionError, match="belongs to federation 'steel'"):
        provision(fed_file(tmp_path / "g.toml", federation="other"), out)
    with pytest.raises(ProvisionError, match="provisioned as agent"):
        provision(
            fed_file(tmp_path / "f.toml", agents='["plant-1"]', consumers='["hmi-1", "plant-2"]'),
            out,
        )


def test_cli_run(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    prov.add_arguments(parser)
    args = parser.parse_args(["--config", str(fed_file(tmp_path / "f.toml")), "--out", str(out)])
    assert prov.run(args) == 0
    assert "issued: coordinator, hmi-1, plant-1, plant-2" in capsys.readouterr().out
    args = parser.parse_args(["--config", str(tmp_path / "missing.toml"), "--out", str(out)])
    assert prov.run(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_install_dirs_are_used_in_rendered_paths(tmp_path: Path, out: Path) -> None:
    extra = 'identities_install_dir = "/etc/alchimia"'
    config = fed_file(tmp_path / "f.toml", extra=extra)
    config.write_text(config.read_text() + 'install_dir = "/etc/mosquitto/alchimia"\n')
    provision(config, out)
    agent = tomllib.loads((out / "identities/plant-1/agent.toml").read_text())
    assert agent["cert_file"] == "/etc/alchimia/plant-1/plant-1.pem"
    conf = (out / "mosquitto/mosquitto.conf").read_text()
    assert "keyfile /etc/mosquitto/alchimia/server.key" in conf


# -- ACL and config rendering ---------------------------------------------------------


def test_acl_text() -> None:
    text = acl_text(
        "f1",
        coordinators=["c"],
        agents=["a2", "a1"],
        consumers=["h"],
        admins=["adm"],
        bridges={"br": ["a2", "a1"]},
    )
    p = "alchimia/v1/f1"
    every = [b.splitlines() for b in text.split("\n\n")[1:]]
    blocks = list(every)
    assert blocks.pop(0) == [
        "# coordinator",
        "user c",
        f"topic read {p}/agents/+/status",
        f"topic read {p}/agents/+/update",
        f"topic read {p}/agents/+/metrics",
        f"topic read {p}/agents/+/secagg",
        f"topic read {p}/coordinator/admin",
        f"topic readwrite {p}/coordinator/status",
        f"topic readwrite {p}/model/current",
        f"topic readwrite {p}/round/current",
        f"topic write {p}/round/secagg",
        f"topic write {p}/round/secagg/+",
    ]
    # The admin commands the coordinator and reads what it publishes and the agents'
    # statuses and metrics; never their updates or predictions.
    assert blocks.pop(0) == [
        "# admin",
        "user adm",
        f"topic write {p}/coordinator/admin",
        f"topic read {p}/coordinator/status",
        f"topic read {p}/model/current",
        f"topic read {p}/round/current",
        f"topic read {p}/bridges/+/state",
        f"topic read {p}/agents/+/status",
        f"topic read {p}/agents/+/metrics",
    ]
    # The bridge may do what its agents may (each rule once), and publish its own state.
    bridge = blocks.pop(2)
    assert bridge[:2] == ["# bridge", "user br"]
    assert bridge[-1] == f"topic write {p}/bridges/br/state"
    assert sorted(bridge[2:-1]) == sorted(set(blocks[0][2:]) | set(blocks[1][2:]))
    assert len(bridge[2:-1]) == len(set(bridge[2:-1]))
    assert blocks[0] == [
        "# agent",
        "user a1",
        f"topic read {p}/model/current",
        f"topic read {p}/round/current",
        f"topic read {p}/coordinator/status",
        f"topic read {p}/round/secagg",
        f"topic read {p}/round/secagg/a1",
        f"topic read {p}/agents/a1/infer/request",
        f"topic read {p}/agents/a1/optimize/request",
        f"topic write {p}/agents/a1/status",
        f"topic write {p}/agents/a1/update",
        f"topic write {p}/agents/a1/metrics",
        f"topic write {p}/agents/a1/predictions",
        f"topic write {p}/agents/a1/secagg",
        f"topic write {p}/agents/a1/infer/response/#",
        f"topic write {p}/agents/a1/optimize/response/#",
    ]
    assert blocks[1][1] == "user a2"
    assert blocks[2] == [
        "# consumer",
        "user h",
        f"topic read {p}/model/current",
        f"topic read {p}/coordinator/status",
        f"topic read {p}/agents/+/predictions",
        f"topic write {p}/agents/+/infer/request",
        f"topic read {p}/agents/+/infer/response/h",
        f"topic write {p}/agents/+/optimize/request",
        f"topic read {p}/agents/+/optimize/response/h",
    ]
    assert len(blocks) == 3
    # Nobody but the coordinator may read an update topic, nor write a command.
    readers = [b[1] for b in every if any("update" in r and "read" in r for r in b)]
    assert readers == ["user c"]
    commanders = [
        b[1] for b in every if any(r.startswith("topic write") and "admin" in r for r in b)
    ]
    assert commanders == ["user adm"]
    assert "pattern" not in text


def test_secure_config_rules() -> None:
    base = {
        "tls_port": 8883,
        "ca_file": Path("/x/ca.pem"),
        "cert_file": Path("/x/s.pem"),
        "key_file": Path("/x/s.key"),
        "acl_file": Path("/x/acl"),
        "data_dir": Path("/x/d"),
        "sizing": broker_sizing(10, message_size_limit=1000),
    }
    with pytest.raises(ValueError, match="plain listener needs a password file"):
        secure_config(**base, require_certificate=True, plain_port=1883)
    with pytest.raises(ValueError, match="password file is required"):
        secure_config(**base, require_certificate=False)
    with pytest.raises(ValueError, match="absolute"):
        secure_config(**{**base, "acl_file": Path("acl")}, require_certificate=True)
    conf = secure_config(
        **base, require_certificate=True, plain_port=1883, password_file=Path("/x/passwd")
    )
    assert conf.splitlines()[-1] == "listener 1883 127.0.0.1"
    assert "max_packet_size 66536" in conf and "message_size_limit 1000" in conf
    assert "max_queued_messages 1000" in conf.splitlines()
    # The plain test config is untouched by the secure one.
    assert "allow_anonymous true" in plain_config(1883, Path("/tmp/d"))


# -- passwords ------------------------------------------------------------------------


def test_password_hash_format_matches_mosquitto() -> None:
    encoded = hash_password("s3cret", iterations=101)
    m = re.fullmatch(r"\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", encoded)
    assert m is not None, encoded
    iterations, salt, digest = int(m[1]), base64.b64decode(m[2]), base64.b64decode(m[3])
    assert iterations == 101 and len(salt) == 12 and len(digest) == 64
    assert digest == hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, 101, 64)
    assert verify_password("s3cret", encoded) and not verify_password("s3cret!", encoded)
    # A known entry written by mosquitto_passwd 2.0.11 for password "zz".
    known = (
        "$7$101$BOArQggPWzGZtd20$hBk0o50pmEwSePfhCeJb1dl6YvxPmi7l9TuD/rGOWne+U9bTQoCQq2/"
        "EgSaMBScHUb1oLf8zlLA/ckVpTN1DBg=="
    )
    assert verify_password("zz", known) and not verify_password("zy", known)
    assert not verify_password("zz", "$6$abc$def")
    assert password_file({"b": "$7$x", "a": "$7$y"}) == "a:$7$y\nb:$7$x\n"


# -- TLS helpers ----------------------------------------------------------------------


def test_client_tls_context_reports_missing_and_mismatched_files(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml"), out)
    b1, b2 = out / "identities/plant-1", out / "identities/plant-2"
    with pytest.raises(FileNotFoundError) as err:
        client_tls_context(b1 / "nope.pem")
    assert "ca_file" in explain_tls_error(err.value)
    with pytest.raises(FileNotFoundError) as err:
        client_tls_context(b1 / "ca.pem", b1 / "plant-1.pem", b1 / "missing.key")
    assert "key_file" in explain_tls_error(err.value)
    with pytest.raises(ssl.SSLError) as err2:
        client_tls_context(b1 / "ca.pem", b1 / "plant-1.pem", b2 / "plant-2.key")
    assert "does not belong to cert_file" in explain_tls_error(err2.value)
    ctx = client_tls_context(b1 / "ca.pem", b1 / "plant-1.pem", b1 / "plant-1.key")
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


def test_explain_tls_error_looks_through_wrappers() -> None:
    try:
        try:
            raise ssl.SSLError(
                1, "[SSL: SSLV3_ALERT_CERTIFICATE_REVOKED] sslv3 alert certificate revoked"
            )
        except ssl.SSLError as inner:
            raise RuntimeError("connection lost") from inner
    except RuntimeError as outer:
        assert "revoked" in explain_tls_error(outer)
    assert "refused the login" in explain_tls_error(Exception("[code:135] Not authorized"))
    assert explain_tls_error(ValueError("odd")).startswith("TLS connection to the broker failed")


def test_example_federation_file_provisions(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "federation.example.toml"
    report = provision(example, tmp_path / "out")
    assert sorted(report.issued) == [
        "admin",
        "coordinator",
        "hmi-1",
        "plant-1",
        "plant-2",
        "scrap-planner",
    ]
    # Its placeholder host is pointed out, in the report and in every config.
    assert any("'broker.steel.example' is a placeholder" in w for w in report.warnings)
    agent = (tmp_path / "out/identities/plant-1/agent.toml").read_text()
    assert "If this machine reaches the broker by" in agent.split("broker =")[0]
    # Its commented plant broker, uncommented, is a valid one too.
    text = example.read_text()
    block = text[text.index("# [[plant_brokers]]") :]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    (tmp_path / "plants.toml").write_text(text.replace(block, uncommented))
    report = provision(tmp_path / "plants.toml", tmp_path / "plants")
    assert "bridge-north" in report.issued
    assert (tmp_path / "plants/plant-brokers/bridge-north/mosquitto.conf").is_file()


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="only root can hand files to the broker's user",
)
def test_broker_secrets_belong_to_the_broker_user_when_run_as_root(
    tmp_path: Path, out: Path
) -> None:
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user on this machine")
    provision(fed_file(tmp_path / "f.toml", auth="passwords"), out)
    for rel in ("mosquitto/server.key", "mosquitto/passwd", "mosquitto/acl", "mosquitto/data"):
        assert (out / rel).stat().st_uid == user.pw_uid, rel
    assert (out / "ca/ca.key").stat().st_uid == 0


# -- admins ---------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["certificates", "passwords"])
def test_admin_identity_gets_a_config_for_the_admin_commands(
    tmp_path: Path, out: Path, auth: str
) -> None:
    report = provision(fed_file(tmp_path / "f.toml", auth=auth, extra='admins = ["ops-1"]'), out)
    assert "ops-1" in report.issued
    bundle = out / "identities/ops-1"
    text = (bundle / "admin.toml").read_text()
    assert "rollback VERSION --admin-id ops-1" in text
    admin = tomllib.loads(text)
    keys = {"broker", "federation", "ca_file", "cert_file", "key_file"}
    assert set(admin) == (keys | {"username", "password"} if auth == "passwords" else keys)
    assert mode(bundle / "admin.toml") == 0o600 and mode(bundle / "ops-1.key") == 0o600
    # No model keys: an admin neither signs nor serves models.
    assert not list(bundle.glob("model_signing*"))
    # The admin commands load it with the coordinator's settings model (extra keys refused).
    settings = CoordinatorSettings.load(bundle / "admin.toml")
    assert settings.federation == "steel" and settings.cert_file == bundle / "ops-1.pem"
    acl = (out / "mosquitto/acl").read_text()
    assert "user ops-1\ntopic write alchimia/v1/steel/coordinator/admin\n" in acl
    if auth == "passwords":
        assert "ops-1:" in (out / "mosquitto/passwd").read_text()


def test_admin_role_is_kept(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml", extra='admins = ["ops-1"]'), out)
    with pytest.raises(ProvisionError, match="provisioned as admin"):
        provision(fed_file(tmp_path / "f.toml", consumers='["hmi-1", "ops-1"]'), out)


# -- mosquitto's user -----------------------------------------------------------------


def test_an_empty_broker_user_is_refused_and_root_is_written_out(tmp_path: Path, out: Path) -> None:
    # mosquitto has no "no user": without the line, started as root it still switches to
    # "mosquitto", which cannot read the broker's 0600 files (issue 13 section 4).
    with pytest.raises(FederationFileError, match="switches to 'mosquitto'"):
        provision(fed_file(tmp_path / "f.toml", tail='user = ""'), out)
    provision(fed_file(tmp_path / "f.toml", tail='user = "root"'), out)
    assert "user root" in (out / "mosquitto/mosquitto.conf").read_text().splitlines()


# -- broker sizing --------------------------------------------------------------------


def _dropped(
    max_queued: int,
    max_bytes: int,
    agents: int,
    update_bytes: int,
    *,
    qos0_held: bool,
    inflight: int = 20,
) -> tuple[int, int]:
    """(updates, other messages) mosquitto drops for a coordinator that acknowledges
    nothing while a round's burst arrives: each agent's update (QoS 1) then a status and
    two metrics (QoS 0, as the coordinator subscribes to them).

    Mosquitto 2.0's ``db__ready_for_flight``/``db__ready_for_queue``: QoS 1 goes in flight
    while fewer than ``inflight`` are, else is queued while the QoS 1 messages held above
    those in flight are fewer than max_queued_messages and their bytes below
    max_queued_bytes; QoS 0 is sent while all messages held above ``inflight`` are fewer
    than max_queued_messages and their bytes below max_queued_bytes; 0 is no limit.
    ``qos0_held``: QoS 0 messages stay counted until the client reads them (later 2.0.x
    count the socket's packet queue); in 2.0.11 they leave the count once written.
    """
    count = count12 = bytes_all = bytes12 = 0
    dropped = [0, 0]
    burst = [(1, update_bytes)] + [(0, SMALL_MESSAGE_BYTES)] * 3  # an agent's round
    for _ in range(agents):
        for qos, size in burst:
            if qos == 1:
                ok = count12 < inflight or (
                    (max_queued == 0 or count12 - inflight < max_queued)
                    and (max_bytes == 0 or bytes12 < max_bytes)
                )
            else:
                ok = (max_queued == 0 or count - inflight < max_queued) and (
                    max_bytes == 0 or bytes_all < max_bytes
                )
            if not ok:
                dropped[qos == 0] += 1
            elif qos == 1:
                count, bytes_all = count + 1, bytes_all + size
                count12, bytes12 = count12 + 1, bytes12 + size
            elif qos0_held:
                count, bytes_all = count + 1, bytes_all + size
    return dropped[0], dropped[1]


@pytest.mark.parametrize("qos0_held", [False, True])
@pytest.mark.parametrize("agents", [1, 2, 250, 1000, 2000, 10_000])
def test_broker_sizing_holds_a_whole_round_for_the_coordinator(
    agents: int, qos0_held: bool
) -> None:
    model = 32 * 1024
    sizing = broker_sizing(agents, model)
    assert _dropped(
        sizing.max_queued_messages, sizing.max_queued_bytes, agents, model, qos0_held=qos0_held
    ) == (0, 0)
    assert sizing.max_queued_messages >= MOSQUITTO_MAX_QUEUED_MESSAGES
    # Bytes bounded by that many updates and small messages, not by count x message limit.
    sized = max(agents, MOSQUITTO_MAX_QUEUED_MESSAGES // MESSAGES_PER_AGENT)
    assert sizing.max_queued_bytes == sized * (model + 3 * SMALL_MESSAGE_BYTES)


def test_mosquitto_defaults_drop_updates_past_a_thousand_agents() -> None:
    # What issue 14 measured on 2.0.11 with the defaults (1000 queued, no byte limit):
    # 1,000 agents fine; at 2,000, 1,020 updates reach the coordinator (1,000 queued and
    # 20 in flight) and the rest are dropped, acknowledged to their agents.
    model = 32 * 1024
    assert _dropped(MOSQUITTO_MAX_QUEUED_MESSAGES, 0, 1000, model, qos0_held=False)[0] == 0
    updates_lost, _ = _dropped(MOSQUITTO_MAX_QUEUED_MESSAGES, 0, 2000, model, qos0_held=False)
    assert 2000 - updates_lost == 1020


def test_broker_sizing_message_size_limit() -> None:
    # Twice the model message, rounded up to 64 KiB, at least 1 MiB; an explicit one wins.
    assert broker_sizing(5, 20_000).message_size_limit == 1024 * 1024
    assert broker_sizing(5, 3 * 1024 * 1024 + 1).message_size_limit == 6 * 1024 * 1024 + 65536
    # Never past MQTT's largest packet, headroom included.
    huge = broker_sizing(1, MAX_MESSAGE_SIZE_LIMIT).message_size_limit
    assert huge == MAX_MESSAGE_SIZE_LIMIT and huge + 65536 == 268_435_455
    explicit = broker_sizing(300, 3 * 1024 * 1024, message_size_limit=2 * 1024 * 1024)
    assert explicit.message_size_limit == 2 * 1024 * 1024
    # No update can be larger than the broker lets through.
    assert explicit.max_queued_bytes == 300 * (2 * 1024 * 1024 + 3 * SMALL_MESSAGE_BYTES)
    lines = explicit.lines()
    assert f"max_packet_size {2 * 1024 * 1024 + 65536}" in lines
    assert "max_queued_messages 1200" in lines
    for bad in ((-1, 1000), (5, 0)):
        with pytest.raises(ValueError):
            broker_sizing(*bad)


def test_provisioned_brokers_are_sized_for_their_agents(tmp_path: Path, out: Path) -> None:
    agents = [f"p{i}" for i in range(300)]
    plant = (
        '[[plant_brokers]]\nid = "north"\nhosts = ["north.steel.test"]\n'
        "agents = [" + ", ".join(f'"{a}"' for a in agents[:260]) + "]\n"
    )
    config = fed_file(
        tmp_path / "f.toml",
        agents="[" + ", ".join(f'"{a}"' for a in agents) + "]",
        extra="model_message_bytes = 100000",
        tail=plant,
    )
    config.write_text(config.read_text().replace("message_size_limit = 1048576\n", ""))
    report = provision(config, out)
    central = (out / "mosquitto/mosquitto.conf").read_text().splitlines()
    north = (out / "plant-brokers/north/mosquitto.conf").read_text().splitlines()
    # The central broker carries every agent's messages, the plant broker its own.
    for conf, n in ((central, 300), (north, 260)):
        sizing = broker_sizing(n, 100_000)
        assert sizing.lines() == [
            line
            for line in conf
            if line.startswith(("max_packet_size", "message_size_limit", "max_queued_"))
        ]
        assert f"max_queued_messages {4 * n}" in conf
    assert "message_size_limit 1048576" in central
    assert not any("message_size_limit" in w for w in report.warnings)


def test_a_message_size_limit_below_the_model_is_reported(tmp_path: Path, out: Path) -> None:
    report = provision(fed_file(tmp_path / "f.toml", extra="model_message_bytes = 2097152"), out)
    assert any("would drop every model" in w for w in report.warnings)


# -- plant brokers --------------------------------------------------------------------

PLANT = """
[[plant_brokers]]
id = "bridge-north"
hosts = ["north.steel.test", "10.30.0.5"]
tls_port = 18883
agents = ["plant-1"]
"""


@pytest.mark.parametrize("auth", ["certificates", "passwords"])
def test_plant_broker_bundle(tmp_path: Path, out: Path, auth: str) -> None:
    report = provision(fed_file(tmp_path / "f.toml", auth=auth, tail=PLANT), out)
    assert "bridge-north" in report.issued
    bundle = out / "plant-brokers/bridge-north"
    assert report.plant_brokers_changed == [bundle / "mosquitto.conf"]
    assert "restart mosquitto -c " + str(bundle / "mosquitto.conf") in report.summary()
    assert not (out / "identities/bridge-north").exists()
    ca = x509.load_pem_x509_certificate((out / "ca/ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((bundle / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    assert pki_sans(server) == ["north.steel.test", "10.30.0.5"]
    bridge = x509.load_pem_x509_certificate((bundle / "bridge-north.pem").read_bytes())
    bridge.verify_directly_issued_by(ca)
    assert bridge.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bridge-north"
    client_tls_context(bundle / "ca.pem", bundle / "bridge-north.pem", bundle / "bridge-north.key")
    for rel in ("server.key", "bridge-north.key", "acl", "mosquitto.conf"):
        assert mode(bundle / rel) == 0o600, rel
    assert (bundle / "data").is_dir() and (bundle / "crl.pem").is_file()
    # Its agents connect to it; the others to the central broker.
    plant_1 = tomllib.loads((out / "identities/plant-1/agent.toml").read_text())
    plant_2 = tomllib.loads((out / "identities/plant-2/agent.toml").read_text())
    assert plant_1["broker"] == "mqtts://north.steel.test:18883"
    assert plant_2["broker"] == "mqtts://broker.steel.example:8883"
    # Its ACL has its agents only; the central one lets the bridge act for them.
    local_acl = (bundle / "acl").read_text()
    assert "user plant-1" in local_acl and "plant-2" not in local_acl
    central_acl = (out / "mosquitto/acl").read_text()
    block = central_acl[central_acl.index("user bridge-north") :].split("\n\n")[0]
    assert "topic write alchimia/v1/steel/agents/plant-1/update" in block
    assert "plant-2" not in block and "coordinator/admin" not in block
    conf = (bundle / "mosquitto.conf").read_text().splitlines()
    assert "listener 18883" in conf and "connection central" in conf
    assert "address broker.steel.example:8883" in conf
    assert "topic agents/plant-1/update out 1 alchimia/v1/steel/ alchimia/v1/steel/" in conf
    assert "topic model/current in 1 alchimia/v1/steel/ alchimia/v1/steel/" in conf
    # The bridge section comes after every global option and the listener.
    assert conf.index("connection central") > conf.index("listener 18883")
    if auth == "passwords":
        password = (bundle / "password").read_text().strip()
        assert f"remote_password {password}" in conf and "remote_username bridge-north" in conf
        assert not any(line.startswith("bridge_certfile") for line in conf)
        assert sorted(
            line.split(":")[0] for line in (bundle / "passwd").read_text().splitlines()
        ) == ["plant-1"]
        central = (out / "mosquitto/passwd").read_text()
        assert verify_password(
            password, dict(line.split(":", 1) for line in central.splitlines())["bridge-north"]
        )
    else:
        assert f"bridge_certfile {bundle}/bridge-north.pem" in conf
        assert "require_certificate true" in conf and f"crlfile {bundle}/crl.pem" in conf
        assert not any(line.startswith("remote_password") for line in conf)
    before = snapshot(out)
    assert provision(fed_file(tmp_path / "f.toml", auth=auth, tail=PLANT), out).written == []
    assert snapshot(out) == before


def test_revoking_a_plant_broker(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml", tail=PLANT), out)
    serial = x509.load_pem_x509_certificate(
        (out / "plant-brokers/bridge-north/bridge-north.pem").read_bytes()
    ).serial_number
    conf = (out / "plant-brokers/bridge-north/mosquitto.conf").read_bytes()
    report = provision(fed_file(tmp_path / "f.toml", tail=PLANT, revoked='["bridge-north"]'), out)
    assert report.revoked == ["bridge-north"] and report.plant_brokers_changed == []
    assert "bridge-north" not in (out / "mosquitto/acl").read_text()
    crl = x509.load_pem_x509_crl((out / "ca/crl.pem").read_bytes())
    assert [r.serial_number for r in crl] == [serial]
    assert (out / "plant-brokers/bridge-north/mosquitto.conf").read_bytes() == conf


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (PLANT.replace('["plant-1"]', '["plant-9"]'), "which `agents` does not list"),
        (
            PLANT + PLANT.replace("bridge-north", "bridge-south").replace("north", "south"),
            "behind two plant brokers",
        ),
        (PLANT.replace('"bridge-north"', '"plant-2"'), "listed twice"),
        (PLANT.replace('agents = ["plant-1"]', "agents = []"), "plant_brokers.0.agents"),
        (PLANT.replace('"north.steel.test", ', '"mqtts://north", '), "invalid broker host"),
    ],
)
def test_bad_plant_brokers_are_refused(tmp_path: Path, out: Path, tail: str, message: str) -> None:
    with pytest.raises((FederationFileError, ProvisionError), match=message):
        provision(fed_file(tmp_path / "f.toml", tail=tail), out)


def test_bridge_config_rules() -> None:
    base = {
        "bridge_id": "br",
        "agents": ["a1", "a2"],
        "host": "central.test",
        "port": 8883,
        "ca_file": Path("/x/ca.pem"),
    }
    with pytest.raises(ValueError, match="certificate and key, or a password"):
        bridge_config("f", **base)
    with pytest.raises(ValueError, match="whitespace"):
        bridge_config("f", **base, password="a b")
    text = bridge_config("f", **base, cert_file=Path("/x/br.pem"), key_file=Path("/x/br.key"))
    topics = [line.split()[1:3] for line in text.splitlines() if line.startswith("topic ")]
    # What an agent may read comes in, what it may write goes out: the ACL's own rules.
    # Shared reads: model, task, coordinator status, secure-aggregation broadcasts; each
    # agent: its inbox, 2 request topics, 7 it writes.
    acl = acl_text("f", agents=["a1", "a2"])
    for name, direction in topics:
        access = "read" if direction == "in" else "write"
        assert f"topic {access} alchimia/v1/f/{name}\n" in acl, name
    assert len(topics) == len({t for t, _ in topics}) == 4 + 2 * 10
    assert ["coordinator/admin"] not in [[t] for t, _ in topics]
    assert "remote_clientid br" in text and "cleansession false" in text
    assert "notification_topic alchimia/v1/f/bridges/br/state" in text
    v6 = bridge_config("f", **{**base, "host": "fd00::1"}, password="pw")
    assert "address [fd00::1]:8883" in v6 and "remote_password pw" in v6
