"""Settings shared by every MQTT participant, and the precedence rule for all settings.

Precedence, highest first: command-line flags, environment variables, the TOML config
file given with ``--config``, built-in defaults.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from alchimia.broker.tls import CONNACK_CODES, client_tls_context, explain_tls_error, tls_probe
from alchimia.broker.topics import check_id

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of ``mqtt://host[:port]`` or ``mqtts://host[:port]``."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"broker URL {url!r} must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
    return parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts"


class NodeSettings(BaseSettings):
    """Connection settings common to the coordinator and agents."""

    config_file: ClassVar[Path | None] = None

    broker: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="the broker: mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS",
    )
    federation: str = Field(
        default="demo", description="federation name: topics live under alchimia/v1/NAME"
    )
    username: str | None = Field(default=None, description="broker login (password mode)")
    password: str | None = Field(default=None, description="broker password")
    keepalive: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive, seconds")
    ca_file: Path | None = Field(default=None, description="CA that signed the broker")
    cert_file: Path | None = Field(default=None, description="this identity's certificate")
    key_file: Path | None = Field(default=None, description="this identity's private key")

    @field_validator("broker")
    @classmethod
    def _url(cls, v: str) -> str:
        parse_broker_url(v)
        return v

    @field_validator("federation")
    @classmethod
    def _federation(cls, v: str) -> str:
        return check_id(v, "federation name")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.config_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Any:
        """Settings from flags (``overrides``, None meaning "not given"), env and file."""
        if config_file is not None and not Path(config_file).is_file():
            raise FileNotFoundError(f"config file {config_file} does not exist")
        bound = type(cls.__name__, (cls,), {"config_file": config_file})
        return bound(**{k: v for k, v in overrides.items() if v is not None})

    @property
    def host_port_tls(self) -> tuple[str, int, bool]:
        return parse_broker_url(self.broker)

    def tls_context(self) -> ssl.SSLContext | None:
        """TLS for ``mqtts://`` URLs: the federation CA (and client certificate) if given,
        else the system's trust store; None for plain ``mqtt://``."""
        if not self.host_port_tls[2]:
            return None
        if self.ca_file is None:
            return ssl.create_default_context()
        return client_tls_context(self.ca_file, self.cert_file, self.key_file)

    def paho_client(self, client_id: str) -> Any:
        """A paho-mqtt 2.x client (MQTT 3.1.1, clean session) for this node: its broker
        credentials and TLS set, TCP_NODELAY on its socket (small messages go at once: a
        request is answered in ~0.5 ms instead of ~90 ms, bench/bench_infer.py).
        Connecting, callbacks and the will are the caller's."""
        import paho.mqtt.client as mqtt

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if self.username:
            client.username_pw_set(self.username, self.password)
        tls = self.tls_context()
        if tls is not None:
            client.tls_set_context(tls)
        client.on_socket_open = _no_delay
        return client

    def diagnose_connection(self) -> str:
        """Why the broker refuses this node, in words that say what to fix (one probe)."""
        host, port, _ = self.host_port_tls
        ctx = self.tls_context()
        if ctx is None:
            return "plain connection failed: is the broker running, and is the URL right?"
        try:
            code = tls_probe(host, port, ctx, username=self.username, password=self.password)
        except Exception as exc:  # every failure is something to explain, not to raise
            return explain_tls_error(exc)
        if code == 0:
            return "TLS and login are accepted by the broker; the failure was elsewhere"
        return f"the broker refused the login: {CONNACK_CODES.get(code, code)}"

    model_config = SettingsConfigDict(extra="forbid")


class ServiceSettings(NodeSettings):
    """Settings of a long-running service (coordinator, agent): its Prometheus endpoint."""

    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve Prometheus metrics over HTTP on this port (/metrics); 0 or unset: off",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="address the metrics port listens on (0.0.0.0: every interface)",
    )


def _no_delay(_client: object, _userdata: object, sock: object) -> None:
    """paho's ``on_socket_open``: no Nagle on this socket."""
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
