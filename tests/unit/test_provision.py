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

from broker.mosquitto_conf import acl_text, plain_config, secure_config
from broker.tls import client_tls_context, explain_tls_error
from deploy import provision as prov
from deploy.federation import FederationFileError
from deploy.passwords import hash_password, password_file, verify_password
from deploy.provision import ProvisionError, provision

AGENT_KEYS = {"broker", "federation", "agent_id", "ca_file", "cert_file", "key_file",
              "model_public_key"}


def fed_file(path: Path, *, auth: str = "certificates", agents: str = '["plant-1", "plant-2"]',
             consumers: str = '["hmi-1"]', revoked: str = "[]", extra: str = "",
             federation: str = "steel", hosts: str = '["broker.steel.example", "10.0.0.5"]',
             coordinator: str = '"coordinator"') -> Path:
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
""")
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def test_layout_and_file_modes(tmp_path: Path, out: Path) -> None:
    report = provision(fed_file(tmp_path / "f.toml"), out)
    assert sorted(report.issued) == ["coordinator", "hmi-1", "plant-1", "plant-2"]
    private = ["ca/ca.key", "signing/model_signing.key", "mosquitto/server.key",
               "mosquitto/acl", "state.json", "identities/plant-1/plant-1.key",
               "identities/plant-1/agent.toml", "identities/coordinator/coordinator.key",
               "identities/coordinator/model_signing.key", "identities/hmi-1/hmi-1.key",
               "identities/hmi-1/consumer.toml", "identities/coordinator/coordinator.toml"]
    public = ["ca/ca.pem", "ca/crl.pem", "signing/model_signing.pub", "mosquitto/ca.pem",
              "mosquitto/crl.pem", "mosquitto/server.pem", "mosquitto/mosquitto.conf",
              "identities/plant-1/ca.pem", "identities/plant-1/plant-1.pem",
              "identities/plant-1/model_signing.pub", "identities/hmi-1/model_signing.pub"]
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
    assert (out / "identities/coordinator/model_signing.key").read_bytes() == \
        (out / "signing/model_signing.key").read_bytes()


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
            (out / "identities" / name / f"{name}.pem").read_bytes())
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
    entries = dict(line.split(":", 1)
                   for line in (out / "mosquitto/passwd").read_text().splitlines())
    assert sorted(entries) == ["coordinator", "hmi-1", "plant-1", "plant-2"]
    assert verify_password(password, entries["plant-1"])
    assert not verify_password(password, entries["plant-2"])
    conf = (out / "mosquitto/mosquitto.conf").read_text()
    assert f"password_file {out / 'mosquitto/passwd'}" in conf
    assert "require_certificate false" in conf and "use_identity_as_username false" in conf


def test_broker_config(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml"), out)
    conf = (out / "mosquitto/mosquitto.conf").read_text().splitlines()
    for line in ("per_listener_settings false", "allow_anonymous false", "listener 8883",
                 "require_certificate true", "use_identity_as_username true",
                 f"cafile {out}/mosquitto/ca.pem", f"certfile {out}/mosquitto/server.pem",
                 f"keyfile {out}/mosquitto/server.key", f"crlfile {out}/mosquitto/crl.pem",
                 f"acl_file {out}/mosquitto/acl", "message_size_limit 1048576",
                 f"persistence_location {out}/mosquitto/data/", "user mosquitto"):
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
    report = provision(fed_file(tmp_path / "f.toml", agents='["plant-1", "plant-2", "plant-3"]'),
                       out)
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
        (out / "identities/plant-2/plant-2.pem").read_bytes()).serial_number

    report = provision(fed_file(tmp_path / "f.toml", auth="passwords", revoked='["plant-2"]'),
                       out)
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
    assert changed == {"ca/crl.pem", "mosquitto/crl.pem", "mosquitto/acl", "mosquitto/passwd",
                       "state.json"}


def test_reinstating_a_revoked_identity_issues_a_new_certificate(tmp_path: Path,
                                                                  out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml"), out)
    old = (out / "identities/plant-2/plant-2.pem").read_bytes()
    provision(fed_file(tmp_path / "f.toml", agents='["plant-1", {id = "plant-2", revoked = true}]'),
              out)
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
    report = provision(fed_file(tmp_path / "f.toml", agents='["plant-1"]',
                                revoked='["plant-2"]'), out)
    assert report.revoked == ["plant-2"]
    report = provision(fed_file(tmp_path / "f.toml", agents='["plant-1"]'), out)
    assert report.revoked == [] and report.written == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"revoked": '["plant-9"]'}, "check the spelling"),
    ({"agents": '["plant-1", "plant-1"]'}, "listed twice"),
    ({"agents": '["plant/1"]'}, "invalid identity id"),
    ({"hosts": '["mqtts://broker:8883"]'}, "invalid broker host"),
    ({"hosts": "[]"}, "broker.hosts"),
    ({"extra": "colour = 1"}, "colour"),
])
def test_bad_federation_files_are_refused(tmp_path: Path, out: Path, kwargs: dict[str, str],
                                          message: str) -> None:
    with pytest.raises((FederationFileError, ProvisionError), match=message):
        provision(fed_file(tmp_path / "f.toml", **kwargs), out)


def test_out_dir_of_another_federation_is_refused(tmp_path: Path, out: Path) -> None:
    provision(fed_file(tmp_path / "f.toml"), out)
    with pytest.raises(ProvisionError, match="belongs to federation 'steel'"):
        provision(fed_file(tmp_path / "g.toml", federation="other"), out)
    with pytest.raises(ProvisionError, match="provisioned as agent"):
        provision(fed_file(tmp_path / "f.toml", agents='["plant-1"]',
                           consumers='["hmi-1", "plant-2"]'), out)


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
    text = acl_text("f1", coordinators=["c"], agents=["a2", "a1"], consumers=["h"])
    p = "alchimia/v1/f1"
    blocks = [b.splitlines() for b in text.split("\n\n")[1:]]
    assert blocks[0] == ["# coordinator", "user c",
                         f"topic read {p}/agents/+/status", f"topic read {p}/agents/+/update",
                         f"topic read {p}/agents/+/metrics",
                         f"topic readwrite {p}/coordinator/status",
                         f"topic readwrite {p}/model/current",
                         f"topic readwrite {p}/round/current"]
    assert blocks[1] == ["# agent", "user a1",
                         f"topic read {p}/model/current", f"topic read {p}/round/current",
                         f"topic read {p}/coordinator/status",
                         f"topic read {p}/agents/a1/infer/request",
                         f"topic read {p}/agents/a1/optimize/request",
                         f"topic write {p}/agents/a1/status", f"topic write {p}/agents/a1/update",
                         f"topic write {p}/agents/a1/metrics",
                         f"topic write {p}/agents/a1/predictions",
                         f"topic write {p}/agents/a1/infer/response/#",
                         f"topic write {p}/agents/a1/optimize/response/#"]
    assert blocks[2][1] == "user a2"
    assert blocks[3] == ["# consumer", "user h",
                         f"topic read {p}/model/current", f"topic read {p}/coordinator/status",
                         f"topic read {p}/agents/+/predictions",
                         f"topic write {p}/agents/+/infer/request",
                         f"topic read {p}/agents/+/infer/response/h",
                         f"topic write {p}/agents/+/optimize/request",
                         f"topic read {p}/agents/+/optimize/response/h"]
    assert len(blocks) == 4
    # Nobody but the coordinator may read an update topic.
    readers = [b[1] for b in blocks if any("update" in r and "read" in r for r in b)]
    assert readers == ["user c"]
    assert "pattern" not in text


def test_secure_config_rules() -> None:
    base = {"tls_port": 8883, "ca_file": Path("/x/ca.pem"), "cert_file": Path("/x/s.pem"),
            "key_file": Path("/x/s.key"), "acl_file": Path("/x/acl"), "data_dir": Path("/x/d")}
    with pytest.raises(ValueError, match="plain listener needs a password file"):
        secure_config(**base, require_certificate=True, plain_port=1883)
    with pytest.raises(ValueError, match="password file is required"):
        secure_config(**base, require_certificate=False)
    with pytest.raises(ValueError, match="absolute"):
        secure_config(**{**base, "acl_file": Path("acl")}, require_certificate=True)
    conf = secure_config(**base, require_certificate=True, plain_port=1883,
                         password_file=Path("/x/passwd"), message_size_limit=1000)
    assert conf.splitlines()[-1] == "listener 1883 127.0.0.1"
    assert "max_packet_size 66536" in conf and "message_size_limit 1000" in conf
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
    known = ("$7$101$BOArQggPWzGZtd20$hBk0o50pmEwSePfhCeJb1dl6YvxPmi7l9TuD/rGOWne+U9bTQoCQq2/"
             "EgSaMBScHUb1oLf8zlLA/ckVpTN1DBg==")
    assert verify_password("zz", known) and not verify_password("zy", known)
    assert not verify_password("zz", "$6$abc$def")
    assert password_file({"b": "$7$x", "a": "$7$y"}) == "a:$7$y\nb:$7$x\n"


# -- TLS helpers ----------------------------------------------------------------------


def test_client_tls_context_reports_missing_and_mismatched_files(tmp_path: Path,
                                                                out: Path) -> None:
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
            raise ssl.SSLError(1, "[SSL: SSLV3_ALERT_CERTIFICATE_REVOKED] sslv3 alert "
                                  "certificate revoked")
        except ssl.SSLError as inner:
            raise RuntimeError("connection lost") from inner
    except RuntimeError as outer:
        assert "revoked" in explain_tls_error(outer)
    assert "refused the login" in explain_tls_error(Exception("[code:135] Not authorized"))
    assert explain_tls_error(ValueError("odd")).startswith("TLS connection to the broker failed")


def test_example_federation_file_provisions(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "federation.example.toml"
    report = provision(example, tmp_path / "out")
    assert sorted(report.issued) == ["coordinator", "hmi-1", "plant-1", "plant-2",
                                     "scrap-planner"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="only root can hand files to the broker's user")
def test_broker_secrets_belong_to_the_broker_user_when_run_as_root(tmp_path: Path,
                                                                   out: Path) -> None:
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user on this machine")
    provision(fed_file(tmp_path / "f.toml", auth="passwords"), out)
    for rel in ("mosquitto/server.key", "mosquitto/passwd", "mosquitto/acl", "mosquitto/data"):
        assert (out / rel).stat().st_uid == user.pw_uid, rel
    assert (out / "ca/ca.key").stat().st_uid == 0
