"""What every decoder enforces before it allocates, and the error a rejected message raises."""

from __future__ import annotations

from dataclasses import dataclass


class DecodeError(ValueError):
    """A message that must be rejected; the text is the logged reason."""


@dataclass(frozen=True)
class Limits:
    """Upper bounds applied by every decoder before it allocates anything."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_tensors: int = 4096
    max_tensor_elements: int = 64 * 1024 * 1024
    max_total_elements: int = 128 * 1024 * 1024
    max_str_len: int = 64 * 1024
    max_container_len: int = 100_000
    max_depth: int = 32


DEFAULT_LIMITS = Limits()
