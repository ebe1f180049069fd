"""Coordinator configuration (flags > ``ALCHIMIA_COORDINATOR_*`` env > TOML file > defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from broker.settings import NodeSettings
from broker.topics import check_id


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
    epochs: int = Field(default=2, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=32, ge=1)
    hidden: tuple[int, ...] = (64, 32)
    seed: int = 0
    model_signing_key: Path | None = Field(
        default=None, description="Ed25519 private key (PEM) that signs every model")
    rate_limit_per_s: float = Field(default=5.0, gt=0, description="messages per agent")
    rate_limit_burst: int = Field(default=50, ge=1)
    max_update_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)

    @field_validator("coordinator_id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id(v, "coordinator id")
