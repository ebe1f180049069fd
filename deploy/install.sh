#!/usr/bin/env bash
# Create or update the project's virtual environment in .venv (idempotent, no root needed).
#   deploy/install.sh            training + tests (torch CPU build, pytest, ruff)
#   deploy/install.sh consumer   inference only (onnxruntime, no torch)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train,dev}"
[ "$extras" = consumer ] && extras=""
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)-${extras//,/_}"
if [ -f "$stamp" ]; then
    exit 0
fi
# torch is pinned to 2.13.0 in pyproject.toml; where a local CPU wheel directory exists,
# point pip at it so no CUDA build is ever downloaded.
find_links=()
[ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
.venv/bin/pip install --quiet --disable-pip-version-check "${find_links[@]}" \
    -e ".${extras:+[$extras]}"
touch "$stamp"
