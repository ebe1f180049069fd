"""Generated Mosquitto 2.x configuration: the project's broker settings in one place."""

from __future__ import annotations

from pathlib import Path

# Largest message the broker accepts: a model message of the default network is ~40 kB;
# the ceiling leaves room for larger models while stopping floods of huge payloads.
DEFAULT_MESSAGE_SIZE_LIMIT = 64 * 1024 * 1024


def plain_config(port: int, data_dir: Path, *, bind: str = "127.0.0.1",
                 message_size_limit: int = DEFAULT_MESSAGE_SIZE_LIMIT,
                 persistence: bool = True) -> str:
    """A loopback listener without authentication: for tests and single-host demos."""
    lines = [
        f"listener {port} {bind}",
        "allow_anonymous true",
        f"max_packet_size {message_size_limit + 65536}",
        f"message_size_limit {message_size_limit}",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {data_dir}/",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    return "\n".join(lines) + "\n"
