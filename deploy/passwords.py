"""Mosquitto 2.x password-file entries, written without ``mosquitto_passwd``.

``mosquitto_passwd`` ships with the broker package, so it is often missing where the
federation is provisioned (an admin workstation), and in batch mode it takes the
password on its command line, where ``ps`` shows it to every local user. The format is
small and stable: ``user:$7$ITERATIONS$SALT$HASH``, with PBKDF2-HMAC-SHA512, a 12-byte
salt, a 64-byte derived key and standard base64 with padding (mosquitto's
``pw__hash``/``pw__memcmp_const`` in ``apps/mosquitto_passwd`` and ``src/password_mosq.c``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# Mosquitto's own default is 101; the broker reads the count from each entry, so a
# larger one costs only a few milliseconds per CONNECT.
DEFAULT_ITERATIONS = 10_000
SALT_BYTES = 12
HASH_BYTES = 64


def generate_password() -> str:
    """A random password with 192 bits of entropy, safe in TOML strings and shells."""
    return secrets.token_urlsafe(24)


def hash_password(
    password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """The ``$7$...`` string mosquitto 2 stores for ``password`` (without the ``user:``)."""
    if iterations < 1:
        raise ValueError("iterations must be positive")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    salt_b64, hash_b64 = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"$7${iterations}${salt_b64}${hash_b64}"


def verify_password(password: str, encoded: str) -> bool:
    """Recompute the hash the way mosquitto does; False for any other format."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    if iterations < 1:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def password_file(entries: dict[str, str]) -> str:
    """The file text for ``{username: encoded hash}``, sorted so reruns give the same bytes."""
    for user in entries:
        if ":" in user or "\n" in user:
            raise ValueError(f"invalid username {user!r} for a mosquitto password file")
    return "".join(f"{user}:{entries[user]}\n" for user in sorted(entries))
