"""Coordinator configuration (flags > ``ALCHIMIA_COORDINATOR_*`` env > TOML file > defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from broker.settings import NodeSettings
from broker.topics import check_id
from models.spec import Architecture


class CoordinatorSettings(NodeSettings):
    model_config = SettingsConfigDict(env_prefix="ALCHIMIA_COORDINATOR_", extra="forbid")

    coordinator_id: str = "coordinator"
    state_dir: Path = Path("coordinator-state")
    strategy: str = "fedavg"
    strategy_params: dict[str, float] = Field(default_factory=dict,
                                              description="e.g. server_lr, beta, mu")
    clip_norm: float | None = Field(default=None, gt=0,
                                    description="bound each delta's L2 norm first")
    mode: Literal["sync", "async"] = "sync"
    buffer_k: int = Field(default=3, ge=1, description="async: updates per new version")
    max_staleness: int = Field(default=5, ge=0, description="async: oldest base accepted")
    staleness: str = "polynomial"
    staleness_params: dict[str, float] = Field(default_factory=dict)
    rounds: int = Field(default=0, ge=0, description="stop after this many rounds; 0 = never")
    min_agents: int = Field(default=2, ge=1, description="quorum: fewest updates a round needs")
    fraction: float = Field(default=1.0, gt=0, le=1)
    max_agents: int | None = Field(default=None, ge=1)
    round_timeout_s: float = Field(default=120.0, gt=0)
    round_interval_s: float = Field(
        default=0.0, ge=0, description="sync: pause between rounds; a drift report cuts it short")
    min_new_heats: int = Field(
        default=1, ge=0, description="sync and async: a round opens when min_agents online "
        "agents report at least this many new heats since their last update; 0 = always")
    min_improvement: float = Field(
        default=0.01, ge=0, description="without new heats, rounds go on while the mean "
        "validation error of the agents improves by at least this fraction per version")
    round_schedule_s: float | None = Field(
        default=None, gt=0, description="open a round anyway this long after the last opened")
    epochs: int = Field(default=2, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=32, ge=1)
    architecture: Architecture = Field(
        default="eaf-hybrid-v1", description="model of a new federation (docs/PROTOCOL.md); "
        "a federation keeps the architecture it started with")
    hidden: tuple[int, ...] | None = Field(
        default=None, description="hidden layers (the hybrid's residual network); default: "
        "the architecture's")
    seed: int = 0
    model_signing_key: Path | None = Field(
        default=None, description="Ed25519 private key (PEM) that signs every model")
    # A flood guard, far above what an agent sends of its own accord (about one metrics
    # message per heat, at most ~5/s whatever the heat rate, plus a status every few
    # seconds); answers to each task and model are credited on top (service.ANSWER_CREDIT).
    rate_limit_per_s: float = Field(default=20.0, gt=0, description="messages per agent")
    rate_limit_burst: int = Field(default=200, ge=1)
    max_update_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)

    @field_validator("coordinator_id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id(v, "coordinator id")
