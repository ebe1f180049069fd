"""The federation file (TOML): who belongs to a federation and how its broker is reached.

See ``deploy/federation.example.toml`` for every key with its default.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from broker.mosquitto_conf import DEFAULT_MESSAGE_SIZE_LIMIT, PACKET_HEADROOM
from broker.topics import check_id

Role = Literal["coordinator", "agent", "consumer"]
# MQTT's largest packet (remaining length) is 268,435,455 bytes.
MAX_MESSAGE_SIZE_LIMIT = 268_435_455 - PACKET_HEADROOM
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class FederationFileError(ValueError):
    """The federation file cannot be used; the message says which key to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentitySpec(_Strict):
    id: str
    revoked: bool = False

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id(v, "identity id")


class BrokerSpec(_Strict):
    # Names and addresses clients use; the first one goes into every identity's broker URL.
    hosts: list[str] = Field(min_length=1)
    tls_port: int = Field(default=8883, ge=1, le=65535)
    tls_bind: str | None = None  # address of the TLS listener; all interfaces when absent
    plain_port: int | None = Field(default=None, ge=1, le=65535)  # loopback only
    # mosquitto started as root switches to this user; "" leaves the `user` line out.
    user: str = "mosquitto"
    # Where the broker bundle (DIR/mosquitto) will live on the broker host, if elsewhere.
    install_dir: Path | None = None

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        out = []
        for raw in v:
            host = raw.strip("[]")
            try:
                # Canonical text, as it reads back from the certificate's SAN.
                host = str(ipaddress.ip_address(host))
            except ValueError:
                if not _HOST_RE.match(host):
                    raise ValueError(f"invalid broker host {raw!r}: use a DNS name or an IP "
                                     "address, without scheme or port") from None
                host = host.lower()
            if host in out:
                raise ValueError(f"broker host {raw!r} is listed twice")
            out.append(host)
        return out

    @field_validator("tls_bind")
    @classmethod
    def _bind(cls, v: str | None) -> str | None:
        # Rendered into mosquitto.conf: anything but one plain token could inject options.
        if v is not None and not _HOST_RE.match(v):
            try:
                v = str(ipaddress.ip_address(v))
            except ValueError:
                raise ValueError(f"invalid tls_bind {v!r}: not an address") from None
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if v and not _USER_RE.match(v):
            raise ValueError(f"invalid user {v!r}: use a plain system user name")
        return v

    @field_validator("install_dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError("install_dir must be an absolute path")
        return v


class PkiSpec(_Strict):
    ca_days: int = Field(default=7300, ge=1)
    cert_days: int = Field(default=1825, ge=1)


class FederationFile(_Strict):
    federation: str
    auth: Literal["certificates", "passwords"] = "certificates"
    message_size_limit: int = Field(default=DEFAULT_MESSAGE_SIZE_LIMIT, ge=1024,
                                    le=MAX_MESSAGE_SIZE_LIMIT)
    # Each identity is a bare id or a table {id = "...", revoked = true}.
    coordinator: IdentitySpec = IdentitySpec(id="coordinator")
    agents: list[IdentitySpec] = []
    consumers: list[IdentitySpec] = []
    revoked: list[str] = []
    # Where identity bundles (DIR/identities/NAME) will live on their machines, if elsewhere.
    identities_install_dir: Path | None = None
    broker: BrokerSpec
    pki: PkiSpec = PkiSpec()

    @field_validator("federation")
    @classmethod
    def _federation(cls, v: str) -> str:
        return check_id(v, "federation name")

    @field_validator("coordinator", mode="before")
    @classmethod
    def _bare_id(cls, v: object) -> object:
        return {"id": v} if isinstance(v, str) else v

    @field_validator("agents", "consumers", mode="before")
    @classmethod
    def _bare_ids(cls, v: object) -> object:
        return [{"id": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @field_validator("revoked")
    @classmethod
    def _revoked(cls, v: list[str]) -> list[str]:
        return [check_id(name, "revoked identity id") for name in v]

    @field_validator("identities_install_dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError("identities_install_dir must be an absolute path")
        return v

    def identities(self) -> dict[str, tuple[Role, bool]]:
        """``{id: (role, revoked)}``; an id may appear once across all roles."""
        out: dict[str, tuple[Role, bool]] = {}
        listed: list[tuple[Role, IdentitySpec]] = [("coordinator", self.coordinator)]
        listed += [("agent", a) for a in self.agents]
        listed += [("consumer", c) for c in self.consumers]
        for role, spec in listed:
            if spec.id in out:
                raise FederationFileError(
                    f"identity {spec.id!r} is listed twice: ids are usernames and must be unique")
            out[spec.id] = (role, spec.revoked)
        for name in self.revoked:
            if name in out:
                out[name] = (out[name][0], True)
        return out

    def unlisted_revoked(self) -> list[str]:
        """Names in ``revoked`` that no role lists (retired identities dropped from the lists)."""
        listed = {x.id for x in [self.coordinator, *self.agents, *self.consumers]}
        return [name for name in self.revoked if name not in listed]


def load_federation(path: Path) -> FederationFile:
    """Parse and validate a federation file, with errors that name the offending key."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FederationFileError(f"federation file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise FederationFileError(f"{path} is not valid TOML: {exc}") from None
    try:
        return FederationFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors())
        raise FederationFileError(f"{path}: {problems}") from None
