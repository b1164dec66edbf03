"""Pictures of a search: the cells of a genotype, and the architecture weights over the epochs.

Drawn with matplotlib alone on its Agg canvas (a pip wheel, no display, no graphviz binary), so
the plots work on a headless cluster node and in CI. Figures are built with `Figure()` rather than
pyplot: nothing global is kept, so a long search can draw every epoch without leaking figures.

Cell graphs follow the DARTS genotype format: per cell type a list of [op, input] edges, two per
intermediate node; input 0 and 1 are the cell's input states, 2 + i is intermediate node i.
Fabrics (the PNFS space, search_spaces/fabric.py) are drawn as a grid per body part: x the layer,
y the scale, the kept cells and links over the faint outline of every position the fabric has.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import MaxNLocator

from nas.errors import UserError
from nas.genotype import Genotype, GenotypeError

# What the two input states of each cell type are (fusion: PoseNAS's decoder cell).
INPUT_NAMES = {"normal": (r"$c_{k-2}$", r"$c_{k-1}$"), "reduce": (r"$c_{k-2}$", r"$c_{k-1}$"),
               "fusion": ("encoder skip", "deeper\n(upsampled)")}
OUTPUT_NAMES = {"normal": r"$c_k$ (concat)", "reduce": r"$c_k$ (concat)", "fusion": "fused (concat)"}
TITLES = {"normal": "normal cell", "reduce": "reduction cell", "fusion": "fusion cell"}
SHORT_INPUTS = {"normal": ("k-2", "k-1"), "reduce": ("k-2", "k-1"), "fusion": ("skip", "up")}
EDGE_GID, LABEL_GID = "edge", "edge-label"  # tags on the artists, so tests can count them
LABEL_BOX = (0.9, 0.3)  # data units an edge label covers (x, y): labels keep this far apart
# Fabric drawings: tags on the artists (tests count them), and what the boxes and arrows look like.
CELL_GID, CELL_LABEL_GID, SLOT_GID = "fabric-cell", "fabric-cell-label", "fabric-slot"
LINK_GID, INPUT_GID, HEAD_GID = "fabric-link", "fabric-input", "fabric-head"
SCALE_NAMES = ("1/4", "1/8", "1/16", "1/32")
FABRIC_LINKS = ("same", "finer", "coarser")  # search_spaces.fabric.LINKS, the order of a cell's betas
LINK_COLORS = {"same": "0.15", "finer": "C0", "coarser": "C3"}
LINK_NAMES = {"same": "same scale", "finer": "from the finer scale (3x3 stride-2 conv)",
              "coarser": "from the coarser scale (1x1 conv, upsampled)"}
MEMBER_STYLES = ("-", "--", ":", "-.")  # arch-weight lines of one group (a fabric cell's links) told apart
FABRIC_BOX = (0.72, 0.7)  # a position's box in data units (one layer wide, one scale high)


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
                        f"genotypes such as darts_cells, and fabric genotypes")
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


# ---------------------------------------------------------------- fabrics (PNFS)

def is_fabric(genotype: Genotype) -> bool:
    """Does the genotype have the fabric space's shape ({"parts": [...]})? Whether it is valid is the space's
    `validate`."""
    g = genotype.genotype
    return isinstance(g, dict) and set(g) == {"parts"} and isinstance(g["parts"], list)


def short_op(name: str) -> str:
    """An op name shortened for a cell box: sep_conv_3x3 -> sep 3x3, skip_connect -> skip."""
    return name.replace("skip_connect", "skip").replace("_conv_", " ").replace("_", " ")


def _ops_lines(ops: Sequence) -> list[str]:
    """A cell's text: per edge its op, or its summed ops one a line ("+ ..."); edges named when there are
    several."""
    lines = []
    for e, entry in enumerate(ops):
        names = [short_op(entry)] if isinstance(entry, str) else [short_op(o) for o in entry]
        lines += [(f"e{e} " if len(ops) > 1 and not k else "") + ("+ " if k else "") + n
                  for k, n in enumerate(names)]
    return lines


def _fabric_space(genotype: Genotype) -> Any:
    """The genotype's FabricSpace, the genotype checked against it (GenotypeError names a bad field)."""
    from search_spaces.fabric import FabricSpace
    if not is_fabric(genotype):
        raise UserError(f"space {genotype.space!r} is not a fabric (its genotype holds "
                        f"{', '.join(genotype.genotype) or 'nothing'}, not only \"parts\"); draw it with plot_cells")
    try:
        space = FabricSpace(**genotype.space_args)
    except (TypeError, ValueError) as err:
        raise GenotypeError(f"field 'space_args' does not make a fabric space: {err}") from None
    space.validate(genotype)
    return space


def _box(ax: Axes, xy: tuple[float, float], text: str, gid: str, fc: str, ec: str = "0.3",
         ls: str = "-", fontsize: float = 7.0, label_gid: str | None = None) -> FancyBboxPatch:
    """A FABRIC_BOX-sized rounded box centred on xy, with `text` in it; returns the patch (arrows clip to it)."""
    w, h = FABRIC_BOX
    patch = FancyBboxPatch((xy[0] - w / 2, xy[1] - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.08",
                           fc=fc, ec=ec, ls=ls, lw=0.9, zorder=3 if text else 1, gid=gid)
    ax.add_patch(patch)
    if text:
        ax.text(*xy, text, ha="center", va="center", fontsize=fontsize, zorder=4, gid=label_gid)
    return patch


def _arrow(ax: Axes, src: tuple[float, float], dst: tuple[float, float], patches: tuple, color: str,
           gid: str) -> None:
    ax.annotate("", xy=dst, xytext=src, zorder=2, gid=gid,
                arrowprops=dict(arrowstyle="-|>", color=color, lw=1.1, shrinkA=0, shrinkB=0,
                                patchA=patches[0], patchB=patches[1]))


def _lowest_scale(depth: int, cut: int) -> int:
    """The coarsest scale a fabric drawing shows: its cells' and the backbone maps' (one coarser than layer
    cut's cells at most), so every part's panel has the same rows."""
    from search_spaces.fabric import SCALES, layer_cells
    return max(max(layer_cells(depth, j) for j in range(cut, depth)) - 1, min(layer_cells(depth, cut), SCALES - 1))


def draw_fabric(ax: Axes, part: dict, index: int, depth: int, cut: int) -> None:
    """One part's fabric on `ax` at (x, y) = (layer, -scale): faint outlines of every position of layers
    cut..depth-1 (SLOT_GID), the kept cells over them (CELL_GID, their ops CELL_LABEL_GID), an arrow per
    kept link from its source (LINK_GID), the backbone maps layer `cut` reads at x = cut - 1 (INPUT_GID)
    and the head after the last layer's 1/4 cell (HEAD_GID, box and arrow)."""
    from search_spaces.fabric import layer_cells, source_scale
    for j in range(cut, depth):
        for s in range(layer_cells(depth, j)):
            _box(ax, (j, -s), "", SLOT_GID, fc="none", ec="0.75", ls="--")
    cells = {(c["layer"], c["scale"]): c for c in part["cells"]}
    boxes = {pos: _box(ax, (pos[0], -pos[1]), "\n".join(_ops_lines(c["ops"])), CELL_GID, fc="#fff2cc",
                       label_gid=CELL_LABEL_GID) for pos, c in sorted(cells.items())}
    inputs = sorted({source_scale(link, s) for (j, s), c in cells.items() if j == cut for link in c["links"]})
    for s in inputs:
        boxes[(cut - 1, s)] = _box(ax, (cut - 1, -s), f"backbone\n{SCALE_NAMES[s]}", INPUT_GID, fc="#cfe2f3")
    for (j, s), c in sorted(cells.items()):
        for link in c["links"]:
            src = (j - 1, source_scale(link, s))
            _arrow(ax, (src[0], -src[1]), (j, -s), (boxes[src], boxes[(j, s)]), LINK_COLORS[link], LINK_GID)
    head = _box(ax, (depth, 0), f"head\n{len(part['keypoints'])} heatmaps", HEAD_GID, fc="#d9ead3")
    _arrow(ax, (depth - 1, 0), (depth, 0), (boxes[(depth - 1, 0)], head), "0.15", HEAD_GID)
    bottom = _lowest_scale(depth, cut)
    ax.set_xlim(cut - 1.5, depth + 0.5)
    ax.set_ylim(-bottom - 0.5, 0.5)
    ax.set_xticks(range(cut - 1, depth + 1), [f"{cut - 1}\n(backbone)"] + [str(j) for j in range(cut, depth)]
                  + ["head"], fontsize=8)
    ax.set_yticks([-s for s in range(bottom + 1)], SCALE_NAMES[:bottom + 1], fontsize=8)
    ax.set_xlabel("layer", fontsize=8)
    ax.set_ylabel("scale", fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"part {index}: keypoints {', '.join(map(str, part['keypoints']))}", fontsize=10)


def fabric_figure(genotype: Genotype) -> Figure:
    """A panel per part of a fabric genotype (see `draw_fabric`), and a legend of the link kinds."""
    space = _fabric_space(genotype)
    depth, cut = space.args["depth"], space.args["cut"]
    parts = genotype.genotype["parts"]
    ncols = min(3, len(parts))
    nrows = math.ceil(len(parts) / ncols)
    lines = max(len(_ops_lines(c["ops"])) for part in parts for c in part["cells"])
    row_in = max(0.85, (0.14 * lines + 0.25) / FABRIC_BOX[1])  # inches per scale: the box holds its text
    width, height = 1.35 * (depth - cut + 2) + 0.6, row_in * (_lowest_scale(depth, cut) + 1) + 0.9
    fig = Figure(figsize=(width * ncols, height * nrows + 0.5), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for p, ax in enumerate(grid.flat):
        if p < len(parts):
            draw_fabric(ax, parts[p], p, depth, cut)
        else:
            ax.axis("off")
    handles = [Line2D([], [], color=LINK_COLORS[k], lw=1.5, label=LINK_NAMES[k]) for k in FABRIC_LINKS]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8)
    return fig


def plot_fabric(genotype: Genotype, png_path: str | Path) -> Path:
    """Draw every part's fabric of a fabric genotype into one PNG; returns its path."""
    return _save(fabric_figure(genotype), png_path)


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


def weight_names(record: dict, key: str, n: int) -> tuple[list[str], bool]:
    """Names of the n rows (alphas) or entries (betas) of weights[key], and whether they come in groups
    (a fabric cell's three links): the record's own `labels[key]` when it has n of them (written by
    supernets with `arch_weight_labels()`, e.g. the fabric's "L3 S1 finer"); for a fabric part's table from
    a record without labels, rows and cells by number ("row 0", "cell 2 finer"); else DARTS edge names."""
    labels = record.get("labels")
    names = labels.get(key) if isinstance(labels, dict) else None
    if isinstance(names, list) and len(names) == n and all(isinstance(x, str) for x in names):
        return names, key.startswith("beta_")
    kind = key.removeprefix("beta_")
    if re.fullmatch(r"p\d+", kind):  # search_spaces.fabric's per-part keys
        if kind == key:
            return [f"row {e}" for e in range(n)], False
        if n % len(FABRIC_LINKS) == 0:
            return [f"cell {i // len(FABRIC_LINKS)} {FABRIC_LINKS[i % len(FABRIC_LINKS)]}" for i in range(n)], True
    return edge_names(kind, n), False


def _groups(names: list[str]) -> tuple[list[str], list[str]] | None:
    """Names as "<group> <member>" (e.g. "L3 S1" "finer"): the groups and members in first-seen order, or
    None when there are more members than line styles to tell them apart."""
    split = [name.rsplit(" ", 1) for name in names]
    if not all(len(parts) == 2 for parts in split):
        return None
    groups, members = list(dict.fromkeys(g for g, _ in split)), list(dict.fromkeys(m for _, m in split))
    return (groups, members) if len(members) <= len(MEMBER_STYLES) else None


def _plot_ops(axes: Sequence[Axes], kind: str, series: list, epochs: list[int], primitives: list[str],
              names: list[str]) -> None:
    for e, ax in enumerate(axes):
        if e >= len(names):
            ax.axis("off")
            continue
        for k, op in enumerate(primitives):
            ax.plot(epochs, [w[e][k] for w in series], marker=".", ms=3, lw=1.2, label=op, color=f"C{k}")
        ax.set_title(f"{kind}: {names[e]}", fontsize=8)
        ax.tick_params(labelsize=7)


def _plot_grouped(ax: Axes, series: list, epochs: list[int], names: list[str],
                  groups: tuple[list[str], list[str]]) -> tuple[list, list[str]]:
    """A line per entry, a colour per group and a line style per member; returns a legend of the groups'
    colours and the members' styles (a line each would be cells x links entries)."""
    cells, members = groups
    for e, name in enumerate(names):
        group, member = name.rsplit(" ", 1)
        g = cells.index(group)
        ax.plot(epochs, [w[e] for w in series], marker=".", ms=2.5, lw=1.0, label=name,
                color=f"C{g % 10}", ls=MEMBER_STYLES[members.index(member)], alpha=1.0 if g < 10 else 0.6)
    handles = [Line2D([], [], color=f"C{g % 10}", lw=2.0) for g in range(len(cells))]
    handles += [Line2D([], [], color="0.3", lw=1.0, ls=MEMBER_STYLES[m]) for m in range(len(members))]
    return handles, cells + members


def _plot_betas(axes: Sequence[Axes], keys: list[str], records: list[dict], epochs: list[int]) -> None:
    """A panel per beta_* key, a line per edge; legends go to the row's spare panels when there are
    enough (nine lines leave no room inside a panel)."""
    spare = list(axes[len(keys):])
    for ax in spare:
        ax.axis("off")
    for i, key in enumerate(keys):
        series, ax = _series(records, key), axes[i]
        names, grouped = weight_names(records[-1], key, len(series[0]))
        groups = _groups(names) if grouped else None
        if groups:
            handles, labels = _plot_grouped(ax, series, epochs, names, groups)
        else:
            for e, name in enumerate(names):
                ax.plot(epochs, [w[e] for w in series], marker=".", ms=3, lw=1.0, label=name,
                        color=f"C{e % 10}", ls="-" if e < 10 else "--")
            handles, labels = ax.get_legend_handles_labels()
        ax.set_title(f"{key} (edge weights)" if not grouped else f"{key} weights", fontsize=8)
        ax.tick_params(labelsize=7)
        where = spare[i] if len(spare) >= len(keys) else ax
        where.legend(handles, labels, title=key, fontsize=6.5, title_fontsize=7,
                     ncol=2, loc="center" if where is not ax else "best")


def _rank(kind: str) -> int:
    """Cell types in the order of the network (normal, reduce, fusion), unknown ones after."""
    return list(TITLES).index(kind) if kind in TITLES else len(TITLES)


def _natural(key: str) -> list:
    """Sort key with numbers as numbers: p2 before p10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def arch_weights_figure(records: list[dict]) -> Figure:
    """One panel per edge per cell type (a line per op), plus a row for beta_* edge weights. Rows and
    lines are named by the last record's `labels` where it has them (see `weight_names`)."""
    epochs = [int(r["epoch"]) for r in records]
    last = records[-1]
    primitives = list(last["primitives"])
    order = sorted(last["weights"], key=lambda k: (_rank(k.removeprefix("beta_")), _natural(k)))
    kinds = [k for k in order if not k.startswith("beta_")]
    betas = [k for k in order if k.startswith("beta_")]
    grouped = any(weight_names(last, k, len(last["weights"][k]))[1] for k in betas)
    cols = max([len(last["weights"][k]) for k in kinds] + [(2 if grouped else 1) * len(betas)])  # legends' room
    rows = len(kinds) + (1 if betas else 0)
    fig = Figure(figsize=(2.3 * cols, 2.0 * rows + 0.8), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for row, kind in enumerate(kinds):
        for ax in grid[row][1:]:
            ax.sharey(grid[row][0])  # one scale per cell type: edges compare at a glance
        series = _series(records, kind)
        _plot_ops(grid[row], kind, series, epochs, primitives, weight_names(last, kind, len(series[0]))[0])
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
    """Every feasible candidate an evolution scored (score against cost), the front joined by a line, and the
    space's reference points when it has some (video: the key network on every frame, the best without fusion)."""
    score, cost = report["score"], report["cost"]
    points = [e for e in report["evaluated"] if not e.get("violations") and score in e]
    front = report["front"]
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.scatter([p[cost] for p in points], [p[score] for p in points], s=14, color="0.6",
               label=f"evaluated ({len(points)})")
    ax.plot([p[cost] for p in front], [p[score] for p in front], "o-", color="C3", ms=5,
            label=f"Pareto front ({len(front)})")
    for i, ref in enumerate(r for r in report.get("references", []) if score in r and cost in r):
        ax.scatter([ref[cost]], [ref[score]], s=46, marker="sDv^"[i % 4], color=f"C{i + 1}", zorder=3,
                   label=ref["label"])
    for key, limit in (report.get("constraints") or {}).items():
        if {"latency_ms": "latency_ms", "gflops": "GFLOPs", "params_m": "params_M"}.get(key) == cost:
            ax.axvline(limit, color="C0", ls="--", lw=1, label=f"limit {limit:g}")
    unit = {"latency_ms": "latency (ms)", "GFLOPs": "GFLOPs", "params_M": "params (M)"}.get(cost, cost)
    ax.set_xlabel(unit)
    where = "held-out training videos, online" if report.get("references") else "held-out training images"
    ax.set_ylabel(f"{score} (shared weights, {where})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_pareto(report: dict, png_path: str | Path) -> Path:
    return _save(pareto_figure(report), png_path)
