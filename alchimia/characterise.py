"""``alchimia characterise``: the learned properties of each scrap grade of a site's serving
model (or of the federation's model with ``--global``), with uncertainty; a table on
stdout, CSV, JSON and a PNG on request. Torch-free: numpy, onnx and ONNX Runtime
(``models.characterise``; the method is in docs/CHARACTERISATION.md)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alchimia.models.characterise import Characterisation


def plot(char: Characterisation, out_png: Path) -> Path:
    """One panel per property: the served value and its interval per grade (the heats'
    own estimate as a cross where it differs); grades absent from the heats in grey, their
    interval is the prior's. Needs matplotlib (the ``train`` extra)."""
    import numpy as np  # here: `alchimia --help` imports this module

    from alchimia import figures
    from alchimia.models.characterise import PROPERTIES, PROPERTY_LABELS

    fig, axes = figures.subplots(2, 4, figsize=(16, 7))
    pos = np.arange(len(char.grades))
    for ax, p in zip(axes.flat, PROPERTIES, strict=False):
        for k, g in enumerate(char.grades):
            e = g.properties[p]
            if math.isnan(e.value):
                continue
            colour = "tab:red" if e.flagged else "tab:blue" if g.heats_charged else "0.6"
            err = None if math.isnan(e.lo) else [[e.value - e.lo], [e.hi - e.value]]
            ax.errorbar(pos[k], e.value, yerr=err, fmt="o", color=colour, capsize=3)
            if e.flagged:
                ax.plot(pos[k], e.fit, "x", color=colour)
        ax.set_xticks(pos, [g.grade for g in char.grades], rotation=60, fontsize=8)
        ax.set_title(PROPERTY_LABELS[p])
        if p.endswith("_pct"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    legend = axes.flat[-1]
    legend.axis("off")
    legend.text(
        0.0,
        0.5,
        f"{char.scope} characterisation, {char.n_heats} heats\n"
        f"{char.level:.0%} intervals (Laplace, docs/CHARACTERISATION.md)\n"
        "grey: grade absent from the heats (prior width)\n"
        "red: the heats disagree with the served value;\n"
        "  x = what the heats alone say",
        fontsize=10,
        va="center",
    )
    fig.suptitle(f"Scrap characterisation: {char.source}")
    return figures.save(fig, out_png)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="DIR_OR_ONNX",
        help="a site's serving directory (model.onnx + model.json) or an .onnx file",
    )
    parser.add_argument(
        "--heats",
        type=Path,
        metavar="CSV",
        help="the site's heats, in time order, for the uncertainty and the "
        "energy effects: one column per model input and outcome "
        "(docs/CHARACTERISATION.md)",
    )
    parser.add_argument(
        "--global",
        dest="scope",
        action="store_const",
        const="global",
        default="site",
        help="the federation's model: the shared tensors alone, the site's offsets left out",
    )
    parser.add_argument("--level", type=float, default=0.9, help="interval level")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the result as JSON")
    parser.add_argument("--csv", type=Path, metavar="OUT", help="write one row per grade")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="write a plot (needs matplotlib: pip install .[train])",
    )


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """``alchimia experiment characterise`` (alchimia.experiment_characterise); torch-free
    so that the parser can be built without the training extra."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="heats per plant (default: the federation experiment's 1500 1500 400 120 80)",
    )
    parser.add_argument("--rounds", type=int, default=40, help="federated rounds")
    parser.add_argument("--level", type=float, default=0.9, help="interval level")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/characterise-experiment.png"),
        help="PNG of learned vs true (one per seed: -seedN is appended)",
    )
    parser.add_argument("--no-plot", action="store_true")


def run(args: argparse.Namespace) -> int:
    from alchimia.models.characterise import PROPERTY_LABELS, characterise_path

    char = characterise_path(args.model, args.heats, args.scope, args.level)
    version = "" if char.version is None else f", model version {char.version}"
    print(
        f"{char.scope} characterisation of {char.source}{version}: "
        f"{char.n_heats} heats, {char.level:.0%} intervals"
    )
    print(char.table())
    print(
        "value (interval). yield: t metal per t charged; contents: % of the charged mass "
        "x recovery at the reference O2;\n"
        f"{PROPERTY_LABELS['energy_kwh_per_t']}: kWh per heat when 1 t of the average "
        "charge is replaced by 1 t of the grade, power-on time re-planned;\n"
        "!: the served value lies outside what the heats alone support (the interval is "
        "widened to hold both; the heats' own estimate is the 'fit' in CSV/JSON)"
    )
    if char.recovery_factor:
        print(
            "recovery at the heats' mean O2 / recovery at the reference: "
            + ", ".join(
                f"{k.removesuffix('_pct').capitalize()} {v:.3f}"
                for k, v in char.recovery_factor.items()
            )
        )
    if char.power_on:
        print(f"planned power-on time: {char.power_on}")
    for note in char.notes:
        print(f"note: {note}")
    if args.json:
        print(f"json: {char.write_json(args.json)}")
    if args.csv:
        print(f"csv: {char.write_csv(args.csv)}")
    if args.plot:
        try:
            print(f"plot: {plot(char, args.plot)}")
        except ImportError as exc:
            print(
                f"alchimia characterise: --plot needs matplotlib (pip install .[train]): {exc}",
                file=sys.stderr,
            )
            return 2
    return 0
