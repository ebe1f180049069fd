"""Agent configuration (flags > ``ALCHIMIA_AGENT_*`` env > TOML file > defaults)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from alchimia.agent.learn.calibrating import min_heats
from alchimia.agent.requests import DEFAULT_MAX_BYTES, DEFAULT_MAX_HEATS
from alchimia.agent.store.buffered import DEFAULT_FLUSH_INTERVAL_S
from alchimia.agent.store.spool import DEFAULT_FSYNC_INTERVAL_S
from alchimia.broker.settings import ServiceSettings
from alchimia.broker.topics import check_id
from alchimia.models.calibration import DEFAULT_LEVEL, DEFAULT_WINDOW


class AgentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ALCHIMIA_AGENT_", extra="forbid")

    agent_id: str = Field(
        default="plant-1",
        description="its id on the bus: its topic subtree agents/{id}/ and its broker identity",
    )
    plant: int = Field(default=1, ge=1, description="simulated plant profile number")
    seed: int = Field(default=0, description="base seed of the simulated plants")
    history_heats: int = Field(
        default=150,
        ge=0,
        description="heats known at start (the simulated plant; a CSV replay with replay_pace)",
    )
    heat_interval_s: float = Field(default=5.0, ge=0, description="0: no new heats")
    drift: list[str] = Field(
        default_factory=list, description="simulated drift scenarios, e.g. supplier_change@300"
    )
    store_sensors: bool = Field(
        default=True, description="sensor points go through the store; off: heats directly"
    )
    store_predictions: bool = Field(
        default=True,
        description="write each heat's prediction (interval, actual outcome), "
        "its error and drift events into the store beside the sensor data (docs/SENSORS.md)",
    )
    influx: str | None = Field(default=None, description="InfluxDB URL; default: SQLite")
    database: str = Field(default="alchimia", description="InfluxDB database name")
    state_dir: Path = Field(
        default=Path("agent-state"), description="embedded SQLite store and InfluxDB spool"
    )
    store_flush_interval_s: float = Field(
        default=DEFAULT_FLUSH_INTERVAL_S,
        gt=0,
        description="InfluxDB: spooled points are "
        "POSTed at least this often (and at once when a heat's tap record is read back, or "
        "5,000 points wait); the latency of sensor data into InfluxDB",
    )
    spool_fsync_interval_s: float = Field(
        default=DEFAULT_FSYNC_INTERVAL_S,
        ge=0,
        description="InfluxDB spool: points are "
        "fsync'd in groups at most this often, so a power loss loses at most this many "
        "seconds of them (a crash of the agent loses none); 0: an fsync per write",
    )
    signal_period_s: float = Field(
        default=5.0, gt=0, le=60, description="simulated sensor sample period"
    )
    sensor_feed: str | None = Field(
        default=None,
        description="MQTT URL of the plant broker carrying the PLC gateway's "
        "sensor topics (docs/SENSORS.md): the furnace's real data instead of the simulator",
    )
    sensor_prefix: str = Field(default="", description="site prefix of the sensor topics")
    replay_heats: Path | None = Field(default=None, description="CSV heat table to replay")
    replay_signals: Path | None = Field(default=None, description="CSV signal table to replay")
    replay_pace: float | None = Field(
        default=None,
        gt=0,
        description="CSV replay: release the recorded heats like a live "
        "feed, this many per second after the first history_heats, each predicted before "
        "it is learned (None: the whole file at once, as history)",
    )
    plant_id: str | None = Field(
        default=None, description="plant id in the sensor topics or CSV (real data)"
    )
    furnace_id: str | None = Field(
        default=None, description="furnace id in the sensor topics or CSV (real data)"
    )
    continual: bool = Field(default=True, description="drift detection, replay, adaptation")
    # The site's continual-learning policy (agent.learn.site_learning.SitePolicy, whose
    # defaults these are; docs/CONTINUAL.md measures them).
    train_window: int = Field(
        default=2000,
        ge=1,
        description="continual: newest heats of the current regime a local training uses",
    )
    replay_rows: int = Field(
        default=200, ge=0, description="continual: old heats replayed beside them"
    )
    ewc_lambda: float = Field(
        default=0.0,
        ge=0,
        description="EWC strength against forgetting in local training "
        "(0: off; replay alone did as well in the drift experiment, docs/CONTINUAL.md)",
    )
    adapt_heats: int = Field(
        default=50,
        ge=5,
        description="after a drift: the new regime's latest training "
        "heats the site part is re-fitted on",
    )
    adapt_every: int = Field(
        default=5,
        ge=1,
        description="after a drift: heats between site re-fits until one "
        "had adapt_heats heats of the new regime",
    )
    adapt_epochs: int = Field(
        default=30,
        ge=1,
        description="after a drift: epochs over the site part on the "
        "recent heats (models with site tensors)",
    )
    adapt_lr: float = Field(default=3e-3, gt=0, description="learning rate of that adaptation")
    adapt_prior: float = Field(
        default=10.0,
        ge=0,
        description="after a drift: weight, in heats, of the site part "
        "as it was when re-fitting it (keeps what the few new heats do not show)",
    )
    status_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="at most one status (with new_heats) this often while "
        "heats arrive; also one after every update and model swap",
    )
    challenger_tolerance: float = Field(
        default=0.1, ge=0, description="a new global model this much worse does not serve"
    )
    challenger_heats: int = Field(default=50, ge=1, description="recent heats it is judged on")
    challenger_min_heats: int = Field(
        default=10, ge=1, description="fewest recent heats a challenger is judged on"
    )
    interval_level: float = Field(
        default=DEFAULT_LEVEL,
        gt=0,
        lt=1,
        description="level of the prediction intervals "
        "the agent publishes and answers with by default (0.9: 90 % of outcomes inside)",
    )
    calibration_window: int = Field(
        default=DEFAULT_WINDOW,
        ge=1,
        description="heats of signed residuals the intervals "
        "are calibrated on (split conformal: held-out heats at a model swap, then each new "
        "heat's); also the heats the published coverage is measured over",
    )
    max_request_heats: int = Field(
        default=DEFAULT_MAX_HEATS, ge=1, description="most planned heats in one infer request"
    )
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_BYTES, ge=1024, description="largest request message accepted, bytes"
    )
    torch_threads: int = Field(default=1, ge=1, description="threads torch trains on")
    model_public_key: Path | None = Field(
        default=None, description="Ed25519 public key (PEM); if set, only signed models run"
    )
    max_model_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="largest model message the agent decodes"
    )

    @field_validator("agent_id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id(v, "agent id")

    @field_validator("plant_id", "furnace_id")
    @classmethod
    def _plant_furnace(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v, "plant or furnace id")

    @model_validator(mode="after")
    def _calibration(self) -> AgentSettings:
        need = min_heats(self.interval_level)
        if self.calibration_window < need:
            raise ValueError(
                f"calibration_window {self.calibration_window} can never give a "
                f"{self.interval_level:.0%} interval: it needs >= {need} heats"
            )
        return self

    @model_validator(mode="after")
    def _real_data(self) -> AgentSettings:
        replay = self.replay_heats is not None or self.replay_signals is not None
        if replay and (self.replay_heats is None or self.replay_signals is None):
            raise ValueError("replay needs both replay_heats and replay_signals")
        if self.replay_pace is not None and not replay:
            raise ValueError("replay_pace paces a CSV replay: it needs replay_heats/signals")
        if self.sensor_feed and replay:
            raise ValueError("choose one data source: sensor_feed or replay_heats/signals")
        if (self.sensor_feed or replay) and not (self.plant_id and self.furnace_id):
            raise ValueError(
                "real data (sensor_feed or replay) needs plant_id and furnace_id: "
                "the furnace whose heats this agent learns from"
            )
        if (self.sensor_feed or replay) and not self.store_sensors:
            raise ValueError("real data goes through the store: store_sensors must be on")
        return self
