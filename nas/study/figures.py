"""Figures of a search study: searched network against random ones, and proxy fidelity.

Built like `nas/plots.py` (a `Figure()` on the Agg canvas, nothing kept by pyplot), so the study can
redraw them while seeds are still running. Both accept an empty or one-point input and then draw
an empty frame with a note, because the study report draws them before every seed has finished.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from nas.errors import UserError
from nas.plots import _save

JITTER = 0.12  # half-width of the horizontal spread of the random dots, in seed slots
MEAN_HALF_WIDTH = 0.25  # half-length of the random-mean line


def _field(record: Any, key: str, where: str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise UserError(f"{where} needs a {key!r} entry, got {record!r}")
    return record[key]


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def plot_search_vs_random(rows: Sequence[dict], png_path: str | Path) -> Path:
    """Per seed, the searched network's score beside the scores of that seed's random networks.

    rows: [{"seed": int, "searched": float | None, "random": [float, ...], "metric": "AP"}, ...].
    Random scores are dots spread sideways (a fixed jitter, so redraws match) with their mean as a
    short line; the searched score is a larger marker. Seeds whose search has not finished
    (searched is None) are left out.
    """
    done = [row for row in rows if _field(row, "searched", "a search-vs-random row") is not None]
    metric = str(rows[0].get("metric", "AP")) if rows and isinstance(rows[0], dict) else "AP"
    fig = Figure(figsize=(max(4.0, 1.0 + 0.8 * len(done)), 3.6))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for x, row in enumerate(done):
        randoms = np.asarray(_field(row, "random", "a search-vs-random row"), dtype=float)
        first = x == 0
        if len(randoms):
            ax.scatter(x + rng.uniform(-JITTER, JITTER, len(randoms)), randoms, s=14, color="tab:gray",
                       alpha=0.7, label="random" if first else None)
            ax.hlines(randoms.mean(), x - MEAN_HALF_WIDTH, x + MEAN_HALF_WIDTH, color="tab:gray",
                      label="random mean" if first else None)
        ax.scatter([x], [float(row["searched"])], s=90, marker="*", color="tab:red", zorder=3,
                   label="searched" if first else None)
    ax.set_xticks(range(len(done)), [str(_field(row, "seed", "a search-vs-random row")) for row in done])
    ax.set_xlim(-0.6, max(len(done), 1) - 0.4)
    ax.set_xlabel("seed")
    ax.set_ylabel(metric)
    if done:
        ax.legend(loc="best", fontsize=8)
    else:
        _note(ax, "no finished seeds yet")
    ax.set_title(f"searched vs random ({metric})")
    fig.tight_layout()
    return _save(fig, png_path)


def plot_proxy_fidelity(points: Sequence[dict], png_path: str | Path, title: str) -> Path:
    """Search-time score (on shared weights) against the AP after retraining, one colour per seed.

    points: [{"score": float, "final": float, "seed": int}, ...]. The caller puts the rank
    correlation in `title`, since it alone knows which statistic and sample the study reports.
    """
    fig = Figure(figsize=(4.8, 3.8))
    ax = fig.add_subplot()
    seeds = sorted({_field(p, "seed", "a proxy-fidelity point") for p in points})
    colours = {seed: f"C{n % 10}" for n, seed in enumerate(seeds)}
    for seed in seeds:
        mine = [p for p in points if p["seed"] == seed]
        ax.scatter([float(_field(p, "score", "a proxy-fidelity point")) for p in mine],
                   [float(_field(p, "final", "a proxy-fidelity point")) for p in mine],
                   s=22, color=colours[seed], label=f"seed {seed}")
    ax.set_xlabel("search-time score (shared weights)")
    ax.set_ylabel("retrained AP")
    ax.set_title(title)
    if seeds:
        ax.legend(loc="best", fontsize=8)
    else:
        _note(ax, "no retrained candidates yet")
    fig.tight_layout()
    return _save(fig, png_path)
