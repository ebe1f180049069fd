"""Flags and README tables generated from the settings models (each setting declared once)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from alchimia.agent.settings import AgentSettings
from alchimia.coordinator.settings import CoordinatorSettings
from alchimia.settings_cli import (
    add_settings_arguments,
    flag_name,
    readme_with_tables,
    settings_given,
    settings_table,
)

README = Path(__file__).resolve().parents[2] / "README.md"
MODELS = {"coordinator": CoordinatorSettings, "agent": AgentSettings}


class Sample(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="X_")

    round_timeout_s: float = Field(default=120.0, description="deadline")
    rate_limit_per_s: float = 20.0
    strategy_params: dict[str, float] = Field(default_factory=dict)
    drift: list[str] = Field(default_factory=list)
    continual: bool = True
    mode: Literal["sync", "async"] = "sync"
    hidden: tuple[int, ...] | None = None
    state_dir: Path = Path("state")
    max_agents: int | None = None


def _parse(*argv: str) -> dict:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, Sample)
    return settings_given(parser.parse_args(list(argv)), Sample)


def test_flag_names_follow_the_rule() -> None:
    names = {n: flag_name(n, f.annotation) for n, f in Sample.model_fields.items()}
    assert names == {
        "round_timeout_s": "--round-timeout",
        "rate_limit_per_s": "--rate-limit-per-s",
        "strategy_params": "--strategy-param",
        "drift": "--drift",
        "continual": "--continual",
        "mode": "--mode",
        "hidden": "--hidden",
        "state_dir": "--state-dir",
        "max_agents": "--max-agents",
    }


def test_only_given_flags_reach_the_settings() -> None:
    assert _parse() == {}
    given = _parse(
        "--round-timeout",
        "5",
        "--strategy-param",
        "mu=0.1",
        "--strategy-param",
        "beta=2",
        "--drift",
        "a@1",
        "--drift",
        "b@2",
        "--no-continual",
        "--mode",
        "async",
        "--hidden",
        "16",
        "8",
        "--state-dir",
        "/tmp/s",
        "--max-agents",
        "3",
    )
    assert given == {
        "round_timeout_s": 5.0,
        "strategy_params": {"mu": 0.1, "beta": 2.0},
        "drift": ["a@1", "b@2"],
        "continual": False,
        "mode": "async",
        "hidden": [16, 8],
        "state_dir": Path("/tmp/s"),
        "max_agents": 3,
    }
    assert Sample(**given).hidden == (16, 8)


@pytest.mark.parametrize(
    "argv", [["--mode", "sometimes"], ["--strategy-param", "mu"], ["--max-agents", "x"]]
)
def test_bad_values_are_refused_by_the_parser(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(*argv)


def test_the_table_names_every_field_with_its_default() -> None:
    table = settings_table(Sample)
    assert (
        "| `round_timeout_s` | `--round-timeout` | `X_ROUND_TIMEOUT_S` | `120.0` | deadline |"
        in table
    )
    assert "| `continual` | `--continual` | `X_CONTINUAL` | `true` |" in table
    assert "| `max_agents` | `--max-agents` | `X_MAX_AGENTS` | none |" in table
    assert len(table.strip().splitlines()) == 2 + len(Sample.model_fields)


def test_every_setting_has_a_description() -> None:
    missing = [
        f"{m.__name__}.{n}"
        for m in MODELS.values()
        for n, f in m.model_fields.items()
        if not f.description
    ]
    assert not missing, missing


def test_the_readme_tables_are_the_generated_ones() -> None:
    text = README.read_text()
    assert readme_with_tables(text, MODELS) == text, (
        "README's settings tables are stale: run .venv/bin/python -m alchimia.settings_cli"
    )
