"""Pictures of a search: the cells of a genotype, and the architecture weights over the epochs.

Drawn with matplotlib alone on its Agg canvas (a pip wheel, no display, no graphviz binary), so
the plots work on a headless cluster node and in CI. Figures are built with `Figure()` rather than
pyplot: nothing global is kept, so a long search can draw every epoch without leaking figures.

Cell graphs follow the DARTS genotype format: per cell type a list of [op, input] edges, two per
intermediate node; input 0 and 1 are the cell's input states, 2 + i is intermediate node i.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nas.errors import UserError
from nas.genotype import Genotype

# What the two input states of each cell type are (fusion: PoseNAS's decoder cell).
INPUT_NAMES = {"normal": (r"$c_{k-2}$", r"$c_{k-1}$"), "reduce": (r"$c_{k-2}$", r"$c_{k-1}$"),
               "fusion": ("encoder skip", "deeper\n(upsampled)")}
OUTPUT_NAMES = {"normal": r"$c_k$ (concat)", "reduce": r"$c_k$ (concat)", "fusion": "fused (concat)"}
TITLES = {"normal": "normal cell", "reduce": "reduction cell", "fusion": "fusion cell"}
SHORT_INPUTS = {"normal": ("k-2", "k-1"), "reduce": ("k-2", "k-1"), "fusion": ("skip", "up")}
EDGE_GID, LABEL_GID = "edge", "edge-label"  # tags on the artists, so tests can count them
LABEL_BOX = (0.9, 0.3)  # data units an edge label covers (x, y): labels keep this far apart


def _save(fig: Figure, png_path: str | Path) -> Path:
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # render with Agg whatever backend matplotlib picked
    fig.savefig(png_path, dpi=110)
    return png_path


# ---------------------------------------------------------------- cell graphs

def _is_cell(edges: Any) -> bool:
    return (isinstance(edges, list) and len(edges) > 0 and len(edges) % 2 == 0
            and all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                    and isinstance(e[1], int) for e in edges))


def genotype_cells(genotype: Genotype) -> dict[str, list]:
    """The cell entries of a genotype ({kind: [[op, input], ...]}); UserError when there are none."""
    cells = {k: v for k, v in genotype.genotype.items() if _is_cell(v)}
    if not cells:
        raise UserError(f"space {genotype.space!r} has no cell graph to draw (its genotype holds "
                        f"{', '.join(genotype.genotype) or 'nothing'}); plot_genotype draws cell-based "
                        f"genotypes such as darts_cells")
    return cells


def _layout(steps: int) -> dict[Any, tuple[float, float]]:
    """Node positions: inputs left, intermediate nodes in a zigzag column, output right.

    The zigzag keeps an edge between non-adjacent intermediate nodes from running through the
    node between them.
    """
    dy = 1.3
    top = (steps - 1) * dy / 2
    pos: dict[Any, tuple[float, float]] = {2 + i: (2.4 + 0.9 * (i % 2), top - i * dy) for i in range(steps)}
    spread = max(0.9, 0.75 * top)
    pos[0], pos[1] = (0.0, spread), (0.0, -spread)
    pos["out"] = (5.2, 0.0)
    return pos


def _near_other_node(pos: dict, src: Any, dst: Any, radius: float = 0.45) -> bool:
    """Does the straight segment src -> dst pass within `radius` of any third node?"""
    (x1, y1), (x2, y2) = pos[src], pos[dst]
    length2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    for node, (px, py) in pos.items():
        if node in (src, dst):
            continue
        t = min(1.0, max(0.0, ((px - x1) * (x2 - x1) + (py - y1) * (y2 - y1)) / length2))
        if math.hypot(px - x1 - t * (x2 - x1), py - y1 - t * (y2 - y1)) < radius:
            return True
    return False


def _curve_point(p0: tuple, p2: tuple, rad: float, t: float) -> tuple[float, float]:
    """Point at t on matplotlib's `arc3,rad=rad` curve (a quadratic Bezier) from p0 to p2."""
    (x1, y1), (x2, y2) = p0, p2
    cx, cy = (x1 + x2) / 2 + rad * (y2 - y1), (y1 + y2) / 2 - rad * (x2 - x1)
    return ((1 - t) ** 2 * x1 + 2 * t * (1 - t) * cx + t ** 2 * x2,
            (1 - t) ** 2 * y1 + 2 * t * (1 - t) * cy + t ** 2 * y2)


def _clearance(p: tuple[float, float], others: list[tuple[float, float]], box: tuple[float, float]) -> float:
    """How far p is from the nearest of `others`, in label boxes (>= 1: a box at p covers none)."""
    return min((max(abs(p[0] - q[0]) / box[0], abs(p[1] - q[1]) / box[1]) for q in others), default=math.inf)


def _label_spot(curve: list[tuple[float, float]], taken: list[tuple[float, float]],
                lines: list[tuple[float, float]]) -> tuple[float, float]:
    """The point of `curve` (sampled from 0.15 to 0.85 of its length) where a label covers no node,
    no earlier label and no other edge's line (a label at a crossing would name either edge)."""
    half = (LABEL_BOX[0] / 2, LABEL_BOX[1] / 2)
    order = sorted(range(len(curve)), key=lambda i: abs(i - (len(curve) - 1) / 2))  # middle first
    def score(p: tuple[float, float]) -> float:
        return min(_clearance(p, taken, LABEL_BOX), _clearance(p, lines, half))
    for i in order:
        if score(curve[i]) >= 1.0:
            return curve[i]
    return max(curve, key=score)


def _node(ax: Axes, xy: tuple[float, float], text: str, color: str) -> Any:
    label = ax.text(*xy, text, ha="center", va="center", fontsize=9, zorder=3,
                    bbox=dict(boxstyle="round,pad=0.35", fc=color, ec="0.3"))
    return label.get_bbox_patch()


def _edge_rads(edges: Sequence, pos: dict) -> list[float]:
    """Curvature per edge: straight unless it would cross a node; a repeated edge bends the other way."""
    rads, seen = [], set()
    for n, (_, src) in enumerate(edges):
        dst = 2 + n // 2
        rad = 0.3 if _near_other_node(pos, src, dst) else 0.0
        rads.append(-rad - 0.3 if (src, dst) in seen else rad)
        seen.add((src, dst))
    return rads


def _draw_nodes(ax: Axes, kind: str, pos: dict, steps: int) -> dict[Any, Any]:
    """Node boxes (inputs, intermediate nodes, output) and the dashed concat arrows; returns the
    box patches, which the edge arrows clip to."""
    names = INPUT_NAMES.get(kind, ("input 0", "input 1"))
    patches = {0: _node(ax, pos[0], names[0], "#cfe2f3"), 1: _node(ax, pos[1], names[1], "#cfe2f3"),
               "out": _node(ax, pos["out"], OUTPUT_NAMES.get(kind, "output (concat)"), "#d9ead3")}
    for i in range(steps):
        patches[2 + i] = _node(ax, pos[2 + i], str(i), "#fff2cc")
    for i in range(steps):  # every intermediate node goes into the concatenation
        ax.annotate("", xy=pos["out"], xytext=pos[2 + i], zorder=1,
                    arrowprops=dict(arrowstyle="-|>", color="0.6", ls="--", lw=0.8, shrinkA=0, shrinkB=0,
                                    patchA=patches[2 + i], patchB=patches["out"]))
    return patches


def _draw_edges(ax: Axes, edges: Sequence, pos: dict, patches: dict) -> None:
    """An arrow per genotype edge (tagged EDGE_GID) and its op name (tagged LABEL_GID)."""
    rads = _edge_rads(edges, pos)
    curves = [[_curve_point(pos[src], pos[2 + n // 2], rad, t / 20) for t in range(21)]
              for n, ((_, src), rad) in enumerate(zip(edges, rads))]
    taken = list(pos.values())
    for n, ((op, src), rad) in enumerate(zip(edges, rads)):
        dst = 2 + n // 2
        ax.annotate("", xy=pos[dst], xytext=pos[src], zorder=2, gid=EDGE_GID,
                    arrowprops=dict(arrowstyle="-|>", color="0.15", lw=1.1, shrinkA=0, shrinkB=0,
                                    connectionstyle=f"arc3,rad={rad}", patchA=patches[src], patchB=patches[dst]))
        lines = [q for m, curve in enumerate(curves) if m != n for q in curve]
        spot = _label_spot(curves[n][3:18], taken, lines)
        taken.append(spot)
        ax.text(*spot, op, ha="center", va="center", fontsize=7.5, zorder=4, gid=LABEL_GID,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))


def draw_cell(ax: Axes, kind: str, edges: Sequence) -> None:
    """One cell as a graph on `ax`: an arrow per genotype edge labelled with its op."""
    steps = len(edges) // 2
    pos = _layout(steps)
    _draw_edges(ax, edges, pos, _draw_nodes(ax, kind, pos, steps))
    ax.set_title(f"{TITLES.get(kind, kind)} ({steps} nodes)", fontsize=11)
    ax.set_xlim(-0.9, 6.2)
    ax.set_ylim(min(y for _, y in pos.values()) - 0.7, max(y for _, y in pos.values()) + 0.7)
    ax.set_aspect("equal")  # arc3 curves and label spots are computed in data units
    ax.axis("off")


def cells_figure(genotype: Genotype) -> Figure:
    """A figure with one panel per cell type of the genotype (see `draw_cell`)."""
    cells = genotype_cells(genotype)
    steps = max(len(edges) // 2 for edges in cells.values())
    height = 0.8 + 0.87 * ((steps - 1) * 1.3 + 1.4)  # ~0.87 inch per data unit, as the width gives
    fig = Figure(figsize=(6.2 * len(cells), max(3.6, height)), layout="constrained")
    for ax, (kind, edges) in zip(fig.subplots(1, len(cells), squeeze=False)[0], cells.items()):
        draw_cell(ax, kind, edges)
    return fig


def plot_cells(genotype: Genotype, png_path: str | Path) -> Path:
    """Draw every cell of a cell-based genotype into one PNG; returns its path."""
    return _save(cells_figure(genotype), png_path)


# ---------------------------------------------------------------- architecture weights

def _json_lines(path: Path) -> list[Any]:
    """The JSON values of a .jsonl file; a half-written last line (the search is still appending)
    is skipped, a bad line elsewhere is an error."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    values = []
    for n, line in enumerate(lines):
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines) - 1:
                raise UserError(f"{path}: line {n + 1} is not JSON") from None
    return values


def read_arch_weights(jsonl_path: str | Path) -> list[dict]:
    """The per-epoch records of arch_weights.jsonl, in epoch order, one per epoch (after a resume
    repeats epochs, the last record of each wins)."""
    records = _json_lines(Path(jsonl_path))
    if not records:
        raise UserError(f"{jsonl_path} holds no epochs yet")
    for n, record in enumerate(records):
        if not (isinstance(record, dict) and isinstance(record.get("epoch"), int)
                and isinstance(record.get("primitives"), list) and isinstance(record.get("weights"), dict)):
            raise UserError(f"{jsonl_path}: record {n + 1} is not {{\"epoch\", \"primitives\", \"weights\"}}")
    by_epoch = {r["epoch"]: r for r in records}
    return [by_epoch[e] for e in sorted(by_epoch)]


def edge_names(kind: str, n_edges: int) -> list[str]:
    """'node <- input' for each row of a cell's weights (node i has 2 + i rows, inputs first)."""
    ins = SHORT_INPUTS.get(kind, ("in0", "in1"))
    names, node = [], 0
    while len(names) < n_edges:
        names += [f"n{node} \u2190 {ins[j] if j < 2 else f'n{j - 2}'}" for j in range(2 + node)]
        node += 1
    return names[:n_edges]


def _series(records: list[dict], key: str) -> list:
    """weights[key] of every epoch, as a list over epochs."""
    return [r["weights"][key] for r in records]


def _plot_ops(axes: Sequence[Axes], kind: str, series: list, epochs: list[int], primitives: list[str]) -> None:
    names = edge_names(kind, len(series[0]))
    for e, ax in enumerate(axes):
        if e >= len(names):
            ax.axis("off")
            continue
        for k, op in enumerate(primitives):
            ax.plot(epochs, [w[e][k] for w in series], marker=".", ms=3, lw=1.2, label=op, color=f"C{k}")
        ax.set_title(f"{kind}: {names[e]}", fontsize=8)
        ax.tick_params(labelsize=7)


def _plot_betas(axes: Sequence[Axes], keys: list[str], records: list[dict], epochs: list[int]) -> None:
    """A panel per beta_* key, a line per edge; legends go to the row's spare panels when there are
    enough (nine lines leave no room inside a panel)."""
    spare = list(axes[len(keys):])
    for ax in spare:
        ax.axis("off")
    for i, key in enumerate(keys):
        series, ax = _series(records, key), axes[i]
        names = edge_names(key.removeprefix("beta_"), len(series[0]))
        for e, name in enumerate(names):
            ax.plot(epochs, [w[e] for w in series], marker=".", ms=3, lw=1.0, label=name,
                    color=f"C{e % 10}", ls="-" if e < 10 else "--")
        ax.set_title(f"{key} (edge weights)", fontsize=8)
        ax.tick_params(labelsize=7)
        where = spare[i] if len(spare) >= len(keys) else ax
        where.legend(*ax.get_legend_handles_labels(), title=key, fontsize=6.5, title_fontsize=7,
                     ncol=2, loc="center" if where is not ax else "best")


def _rank(kind: str) -> int:
    """Cell types in the order of the network (normal, reduce, fusion), unknown ones after."""
    return list(TITLES).index(kind) if kind in TITLES else len(TITLES)


def arch_weights_figure(records: list[dict]) -> Figure:
    """One panel per edge per cell type (a line per op), plus a row for beta_* edge weights."""
    epochs = [int(r["epoch"]) for r in records]
    primitives = list(records[-1]["primitives"])
    order = sorted(records[-1]["weights"], key=lambda k: (_rank(k.removeprefix("beta_")), k))
    kinds = [k for k in order if not k.startswith("beta_")]
    betas = [k for k in order if k.startswith("beta_")]
    cols = max([len(records[-1]["weights"][k]) for k in kinds] + [len(betas)])
    rows = len(kinds) + (1 if betas else 0)
    fig = Figure(figsize=(2.3 * cols, 2.0 * rows + 0.8), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for row, kind in enumerate(kinds):
        for ax in grid[row][1:]:
            ax.sharey(grid[row][0])  # one scale per cell type: edges compare at a glance
        _plot_ops(grid[row], kind, _series(records, kind), epochs, primitives)
        grid[row][0].set_ylabel("softmax weight", fontsize=8)
    if betas:
        _plot_betas(grid[-1], betas, records, epochs)
    for ax in grid[-1]:
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = grid[0][0].get_legend_handles_labels()
    ncol = max(1, min(len(primitives), int(2.3 * cols / 1.7)))  # ~1.7 inch per legend entry
    fig.legend(handles, labels, loc="outside upper center", ncol=ncol, fontsize=9)
    return fig


def plot_arch_weights(jsonl_path: str | Path, png_path: str | Path) -> Path:
    """Draw the architecture-weight trajectories of a search's arch_weights.jsonl; returns the PNG path."""
    return _save(arch_weights_figure(read_arch_weights(jsonl_path)), png_path)


# ---------------------------------------------------------------- Pareto fronts

def pareto_figure(report: dict) -> Figure:
    """Every feasible candidate an evolution scored (score against cost), the front joined by a line."""
    score, cost = report["score"], report["cost"]
    points = [e for e in report["evaluated"] if not e.get("violations") and score in e]
    front = report["front"]
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.scatter([p[cost] for p in points], [p[score] for p in points], s=14, color="0.6",
               label=f"evaluated ({len(points)})")
    ax.plot([p[cost] for p in front], [p[score] for p in front], "o-", color="C3", ms=5,
            label=f"Pareto front ({len(front)})")
    for key, limit in (report.get("constraints") or {}).items():
        if {"latency_ms": "latency_ms", "gflops": "GFLOPs", "params_m": "params_M"}.get(key) == cost:
            ax.axvline(limit, color="C0", ls="--", lw=1, label=f"limit {limit:g}")
    unit = {"latency_ms": "latency (ms)", "GFLOPs": "GFLOPs", "params_M": "params (M)"}.get(cost, cost)
    ax.set_xlabel(unit)
    ax.set_ylabel(f"{score} (shared weights, held-out training images)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_pareto(report: dict, png_path: str | Path) -> Path:
    return _save(pareto_figure(report), png_path)
