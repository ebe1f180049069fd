"""Coordinator configuration (flags > ``ALCHIMIA_COORDINATOR_*`` env > TOML file > defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from alchimia.broker.codec_names import DEFAULT_TOPK_FRACTION, Codec
from alchimia.broker.settings import ServiceSettings
from alchimia.broker.topics import check_id
from alchimia.models.spec import Architecture

# The strategies built on the weighted mean of the deltas (MeanAccumulator): the only ones
# that can aggregate from a sum, as secure aggregation and two-level aggregation give it.
SUM_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


class CoordinatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ALCHIMIA_COORDINATOR_", extra="forbid")

    coordinator_id: str = Field(
        default="coordinator", description="its id on the bus (MQTT client id {federation}-{id})"
    )
    state_dir: Path = Field(
        default=Path("coordinator-state"), description="SQLite database and model version files"
    )
    strategy: str = Field(
        default="fedavg",
        description="fedavg, fedavgm, fedprox, fedadam, "
        "fedyogi, fedadagrad, median, trimmed_mean, krum, multikrum",
    )
    strategy_params: dict[str, float] = Field(
        default_factory=dict, description="e.g. server_lr, beta, mu"
    )
    clip_norm: float | None = Field(
        default=None, gt=0, description="bound each delta's L2 norm first"
    )
    aggregation_threads: int | None = Field(
        default=None,
        ge=1,
        description="threads that aggregate each update, each on its own "
        "slice of the parameters (the result is the same for any count); unset: the cores "
        "this process may run on",
    )
    mode: Literal["sync", "async"] = Field(
        default="sync", description="sync rounds, or async buffered windows (FedBuff)"
    )
    buffer_k: int = Field(default=3, ge=1, description="async: updates per new version")
    max_staleness: int = Field(default=5, ge=0, description="async: oldest base accepted")
    staleness: str = Field(
        default="polynomial",
        description="async weighting of a stale update: constant, polynomial, hinge",
    )
    staleness_params: dict[str, float] = Field(default_factory=dict, description="e.g. alpha, b")
    rounds: int = Field(default=0, ge=0, description="stop after this many rounds; 0 = never")
    min_agents: int = Field(default=2, ge=1, description="quorum: fewest updates a round needs")
    fraction: float = Field(
        default=1.0, gt=0, le=1, description="share of the online agents selected per round"
    )
    max_agents: int | None = Field(default=None, ge=1, description="most agents selected per round")
    round_timeout_s: float = Field(
        default=120.0, gt=0, description="a round's deadline, seconds after it opens"
    )
    round_interval_s: float = Field(
        default=0.0, ge=0, description="sync: pause between rounds; a drift report cuts it short"
    )
    min_new_heats: int = Field(
        default=1,
        ge=0,
        description="sync and async: a round opens when min_agents online "
        "agents report at least this many new heats since their last update; 0 = always",
    )
    min_improvement: float = Field(
        default=0.01,
        ge=0,
        description="without new heats, rounds go on while the mean "
        "validation error of the agents improves by at least this fraction per version",
    )
    round_schedule_s: float | None = Field(
        default=None, gt=0, description="open a round anyway this long after the last opened"
    )
    epochs: int = Field(default=2, ge=1, description="local epochs (sent in the task)")
    lr: float = Field(default=3e-3, gt=0, description="local learning rate (in the task)")
    batch_size: int = Field(default=32, ge=1, description="local batch size (in the task)")
    architecture: Architecture = Field(
        default="eaf-hybrid-v1",
        description="model of a new federation (docs/PROTOCOL.md); "
        "a federation keeps the architecture it started with",
    )
    hidden: tuple[int, ...] | None = Field(
        default=None,
        description="hidden layers (the hybrid's residual network); default: the architecture's",
    )
    seed: int = Field(default=0, description="seed of the first weights and of selection")
    keep_versions: int = Field(
        default=200,
        ge=0,
        description="model version files kept on disk (the newest); older "
        "ones are deleted, their history stays in the database; 0 = keep all",
    )
    model_signing_key: Path | None = Field(
        default=None, description="Ed25519 private key (PEM) that signs every model"
    )
    # A flood guard, far above what an agent sends of its own accord (about one metrics
    # message per heat, at most ~5/s whatever the heat rate, plus a status every few
    # seconds); answers to each task and model are credited on top (service.ANSWER_CREDIT).
    rate_limit_per_s: float = Field(default=20.0, gt=0, description="messages per agent")
    rate_limit_burst: int = Field(
        default=200, ge=1, description="messages per agent allowed at once above the rate"
    )
    max_update_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="largest message the coordinator decodes"
    )
    update_codec: Codec = Field(
        default="raw",
        description="how agents encode their deltas (told in the task): raw "
        "(float32), fp16, int8 (blockwise), sign (2 bits a value), topk, topk_int8 (top-k "
        "of int8); lossy codecs keep error feedback at the agent (docs/FEDERATION.md, "
        "'Compressed updates')",
    )
    update_topk_fraction: float = Field(
        default=DEFAULT_TOPK_FRACTION,
        gt=0,
        le=1,
        description="topk codecs: share of each tensor's entries an update sends",
    )
    dp_clip_norm: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        description="differential privacy (told in the task): "
        "agents clip their delta's L2 norm to this and add Gaussian noise of std "
        "dp_noise_multiplier x this per coordinate; set both or neither (off) "
        "(docs/FEDERATION.md, 'Differential privacy')",
    )
    dp_noise_multiplier: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        description="differential privacy: the noise's std over "
        "dp_clip_norm (z); the accountant reports epsilon in each model's metadata",
    )
    dp_delta: float = Field(
        default=1e-5,
        gt=0,
        lt=1,
        description="differential privacy: the delta at which "
        "epsilon is reported (well below 1 / plants)",
    )
    secure_aggregation: bool = Field(
        default=False,
        description="sync rounds in which the coordinator learns only the sum of "
        "the agents' deltas (pairwise masks, docs/PROTOCOL.md 'Secure aggregation'); needs "
        "a mean-based strategy, no clip_norm, update_codec raw; with dp_* the noise is "
        "distributed among the agents (docs/FEDERATION.md, 'Differential privacy')",
    )
    secagg_phase_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="secure aggregation: how long each exchange of keys, shares "
        "and reveals waits for missing agents before going on without them",
    )
    web_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve the admin web page (/ and "
        "/api/status) over HTTP on this port; 0 or unset: off",
    )
    web_host: str = Field(
        default="127.0.0.1",
        description="address the web page listens on (0.0.0.0: every interface)",
    )
    web_token_file: Path | None = Field(
        default=None,
        description="file holding the token the web page asks for (Bearer or "
        "?token=); default {state_dir}/web-token, created with a random token if missing",
    )

    @field_validator("coordinator_id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id(v, "coordinator id")

    @model_validator(mode="after")
    def _dp_both_or_neither(self) -> CoordinatorSettings:
        if (self.dp_clip_norm is None) != (self.dp_noise_multiplier is None):
            raise ValueError("dp_clip_norm and dp_noise_multiplier are set together")
        return self

    @model_validator(mode="after")
    def _secure_aggregation_fits(self) -> CoordinatorSettings:
        """Secure aggregation hides each update: only what works on their sum may run."""
        if not self.secure_aggregation:
            return self
        why = []
        if self.min_agents < 3:
            why.append("min_agents >= 3 (with two, each would learn the other's update)")
        if self.mode != "sync":
            why.append("mode sync (an async window has no cohort to mask within)")
        if self.strategy not in SUM_STRATEGIES:
            why.append(f"a strategy that needs only the sum ({', '.join(SUM_STRATEGIES)})")
        if self.clip_norm is not None:
            why.append("no clip_norm (it clips each update)")
        if self.update_codec != "raw":
            why.append("update_codec raw (masked inputs are their own encoding)")
        if why:
            raise ValueError("secure_aggregation needs " + "; ".join(why))
        return self
