"""``alchimia models list|export``: the coordinator's model versions, read from its state
directory (on the coordinator's host; the running coordinator may keep writing)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="the coordinator's TOML config (its state_dir)")
    p.add_argument("--state-dir", type=Path, help="the coordinator's state directory")
    actions = p.add_subparsers(dest="action", required=True, metavar="{list,export}")
    listing = actions.add_parser(
        "list",
        help="every version: round, parent, time, strategy, contributors, whether its file is kept",
    )
    listing.add_argument("--json", action="store_true", help="one JSON array")
    export = actions.add_parser("export", help="write one version's ONNX model to a file")
    export.add_argument("version", type=int)
    export.add_argument("--onnx", type=Path, required=True, metavar="FILE")


def version_rows(
    versions: list[tuple[int, int | None, float, dict]], kept: set[int]
) -> list[dict[str, Any]]:
    """One row per version (``CoordinatorDB.versions()``), newest last."""
    return [
        {
            "version": v,
            "round_id": r,
            "created": datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds"),
            "strategy": m.get("strategy", ""),
            "contributors": m.get("contributors", []),
            "rollback_of": m.get("rollback_of"),
            "initial": bool(m.get("initial")),
            "kept": v in kept,
        }
        for v, r, ts, m in versions
    ]


def run(args: argparse.Namespace) -> int:
    from alchimia.broker.schemas import ModelBody, decode
    from alchimia.coordinator.persistence import CoordinatorDB
    from alchimia.coordinator.settings import CoordinatorSettings

    overrides = {"state_dir": args.state_dir} if args.state_dir else {}
    state_dir = CoordinatorSettings.load(args.config, **overrides).state_dir
    if not (state_dir / "coordinator.sqlite").exists():
        raise FileNotFoundError(f"no coordinator state in {state_dir}")
    db = CoordinatorDB(state_dir)
    try:
        if args.action == "export":
            if not db.model_path(args.version).exists():
                print(
                    f"alchimia models: version {args.version} is not kept in {state_dir}",
                    file=sys.stderr,
                )
                return 1
            body = decode(db.load_payload(args.version), ModelBody).body
            assert isinstance(body, ModelBody)
            args.onnx.write_bytes(body.onnx)
            print(f"version {args.version} written to {args.onnx} ({len(body.onnx)} bytes)")
            return 0
        versions = db.versions()
        rows = version_rows(versions, {v for v, *_ in versions if db.model_path(v).exists()})
    finally:
        db.close()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("version", "round", "created (UTC)", "strategy", "contributors", "note", "file")
    for row in rows:
        note = (
            "initial"
            if row["initial"]
            else f"rollback of {row['rollback_of']}"
            if row["rollback_of"] is not None
            else ""
        )
        table.add_row(
            str(row["version"]),
            "" if row["round_id"] is None else str(row["round_id"]),
            row["created"],
            row["strategy"],
            ",".join(row["contributors"]),
            note,
            "kept" if row["kept"] else "pruned",
        )
    Console().print(table)
    return 0
