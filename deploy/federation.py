"""The federation file (TOML): who belongs to a federation and how its broker is reached.

See ``deploy/federation.example.toml`` for every key with its default.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alchimia.broker.mosquitto_conf import (
    DEFAULT_MODEL_MESSAGE_BYTES,
    MAX_MESSAGE_SIZE_LIMIT,
    BrokerSizing,
    broker_sizing,
)
from alchimia.broker.topics import check_id

Role = Literal["coordinator", "admin", "agent", "consumer", "bridge"]
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


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


class _Listener(_Strict):
    """Where clients reach a broker (the central one, or a plant broker)."""

    # Names and addresses clients use; the first one goes into every identity's broker URL.
    hosts: list[str] = Field(min_length=1)
    tls_port: int = Field(default=8883, ge=1, le=65535)
    tls_bind: str | None = None  # address of the TLS listener; all interfaces when absent
    # Where the broker bundle will live on the broker host, if elsewhere.
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
                    raise ValueError(
                        f"invalid broker host {raw!r}: use a DNS name or an IP "
                        "address, without scheme or port"
                    ) from None
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

    @field_validator("install_dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError("install_dir must be an absolute path")
        return v


class BrokerSpec(_Listener):
    plain_port: int | None = Field(default=None, ge=1, le=65535)  # loopback only
    # mosquitto started as root switches to this user (its default: mosquitto) before it
    # reads keys, ACL and passwords; "root" keeps root (not recommended). Plant brokers too.
    user: str = "mosquitto"

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not v:
            raise ValueError(
                "user must not be empty: without a `user` line mosquitto started as root "
                "still switches to 'mosquitto', which cannot read the broker's 0600 files; "
                "name the user mosquitto runs as ('root' keeps root)"
            )
        if not _USER_RE.match(v):
            raise ValueError(f"invalid user {v!r}: use a plain system user name")
        return v


class PlantBrokerSpec(_Listener):
    """A plant (or regional) broker bridged to the central one; its agents connect to it."""

    id: str  # the bridge's identity on the central broker (certificate CN, username)
    revoked: bool = False
    agents: list[str] = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id(v, "plant broker id")


class PkiSpec(_Strict):
    ca_days: int = Field(default=7300, ge=1)
    cert_days: int = Field(default=1825, ge=1)


class FederationFile(_Strict):
    federation: str
    auth: Literal["certificates", "passwords"] = "certificates"
    # Bytes of the largest model message (model/current): sizes the brokers (docs/SCALE.md).
    model_message_bytes: int = Field(
        default=DEFAULT_MODEL_MESSAGE_BYTES, ge=1024, le=MAX_MESSAGE_SIZE_LIMIT
    )
    # Largest payload the brokers accept; default: derived from model_message_bytes.
    message_size_limit: int | None = Field(default=None, ge=1024, le=MAX_MESSAGE_SIZE_LIMIT)
    # Each identity is a bare id or a table {id = "...", revoked = true}.
    coordinator: IdentitySpec = IdentitySpec(id="coordinator")
    admins: list[IdentitySpec] = []
    agents: list[IdentitySpec] = []
    consumers: list[IdentitySpec] = []
    revoked: list[str] = []
    # Where identity bundles (DIR/identities/NAME) will live on their machines, if elsewhere.
    identities_install_dir: Path | None = None
    broker: BrokerSpec
    plant_brokers: list[PlantBrokerSpec] = []
    pki: PkiSpec = PkiSpec()

    @field_validator("federation")
    @classmethod
    def _federation(cls, v: str) -> str:
        return check_id(v, "federation name")

    @field_validator("coordinator", mode="before")
    @classmethod
    def _bare_id(cls, v: object) -> object:
        return {"id": v} if isinstance(v, str) else v

    @field_validator("admins", "agents", "consumers", mode="before")
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

    @model_validator(mode="after")
    def _plant_agents(self) -> FederationFile:
        agents = {a.id for a in self.agents}
        seen: dict[str, str] = {}
        for plant in self.plant_brokers:
            for aid in plant.agents:
                if aid not in agents:
                    raise ValueError(
                        f"plant broker {plant.id!r} lists agent {aid!r}, which "
                        "`agents` does not list"
                    )
                if aid in seen:
                    raise ValueError(
                        f"agent {aid!r} is behind two plant brokers "
                        f"({seen[aid]!r} and {plant.id!r})"
                    )
                seen[aid] = plant.id
        return self

    def _listed(self) -> list[tuple[Role, IdentitySpec | PlantBrokerSpec]]:
        listed: list[tuple[Role, IdentitySpec | PlantBrokerSpec]] = [
            ("coordinator", self.coordinator)
        ]
        listed += [("admin", a) for a in self.admins]
        listed += [("agent", a) for a in self.agents]
        listed += [("consumer", c) for c in self.consumers]
        listed += [("bridge", p) for p in self.plant_brokers]
        return listed

    def identities(self) -> dict[str, tuple[Role, bool]]:
        """``{id: (role, revoked)}``; an id may appear once across all roles (a plant
        broker's id is its bridge's identity)."""
        out: dict[str, tuple[Role, bool]] = {}
        for role, spec in self._listed():
            if spec.id in out:
                raise FederationFileError(
                    f"identity {spec.id!r} is listed twice: ids are usernames and must be unique"
                )
            out[spec.id] = (role, spec.revoked)
        for name in self.revoked:
            if name in out:
                out[name] = (out[name][0], True)
        return out

    def unlisted_revoked(self) -> list[str]:
        """Names in ``revoked`` that no role lists (retired identities dropped from the lists)."""
        listed = {spec.id for _, spec in self._listed()}
        return [name for name in self.revoked if name not in listed]

    def plant_broker_of(self, agent_id: str) -> PlantBrokerSpec | None:
        """The plant broker an agent connects to; None for the central broker."""
        return next((p for p in self.plant_brokers if agent_id in p.agents), None)

    def sizing(self, agents: int) -> BrokerSizing:
        """Queue and message limits of a broker that ``agents`` agents reach."""
        return broker_sizing(
            agents, self.model_message_bytes, message_size_limit=self.message_size_limit
        )


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
            for e in exc.errors()
        )
        raise FederationFileError(f"{path}: {problems}") from None
