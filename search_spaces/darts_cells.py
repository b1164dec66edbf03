"""The PoseNAS DARTS-cell space: a searchable cell encoder and a searchable fusion decoder.

Encoder (PoseNAS's L and C are `layers` and `init_channels`): a stride-4 stem, then `layers`
DARTS cells, `reductions` of them reduction cells (channels double, resolution halves), spread
evenly as in DARTS. Decoder (PoseNAS's Fusion-and-Enhancement): going back up from the deepest
scale, a fusion cell at each scale takes that scale's encoder feature and the upsampled deeper
decoder feature and fuses them with searched ops, so the high-resolution representation is
refined step by step; a 1x1 head gives heatmaps at 1/4 of the input.

Three cell types are searched, each with its own architecture weights: normal, reduce, fusion.
Genotype: {"normal": [[op, input], ...2 per node], "reduce": [...], "fusion": [...]}, where
input 0 and 1 are the cell's two input states and 2.. the cell's earlier nodes.

Options of the supernet: PC-DARTS partial channels with edge normalisation (`partial_channels`,
less search memory), and a path mode (`DartsSupernet.set_path`) that runs one member of the space
through the shared weights at about the cost of the standalone network (weight-sharing search).
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from nas.genotype import Genotype, GenotypeError
from nas.pose.head import HeatmapHead
from search_spaces.bounds import Bound, check_args, is_list
from search_spaces.cells import Edge, FixedCell, SearchCell, num_edges
from search_spaces.ops import OPS, PRIMITIVES, make_op

CELL_TYPES = ("normal", "reduce", "fusion")

# The range of every size argument: the published value behind each maximum, times a margin.
# (The genotype's cells are bounded by `steps`; whole networks by the entry points' budget.)
BOUNDS = {
    "init_channels": Bound(1, 256, "PoseNAS's widest network is L18-C64; x4"),
    "retrain_channels": Bound(1, 256, "PoseNAS's widest network is L18-C64; x4", optional=True),
    "layers": Bound(1, 64, "PoseNAS's deepest network is L18 (DARTS's CIFAR network: 20); x3"),
    "steps": Bound(1, 8, "DARTS's and PoseNAS's cells have 4 nodes; x2"),
    "reductions": Bound(0, 5, "PoseNAS reduces twice; 5 takes the 1/4 stem to 1/128"),
    "num_keypoints": Bound(1, 256, "COCO-WholeBody has 133 keypoints"),
    "max_skips": Bound(0, 16, "a cell has at most 2 x 8 edges", optional=True),
    "partial_channels": Bound(1, 256, "PC-DARTS uses K=4; K divides C", optional=True),
}
CellFactory = Callable[[str, int, int, int, bool], nn.Module]


def stem(c_out: int, affine: bool) -> nn.Sequential:
    """Two stride-2 3x3 convs: (B, 3, H, W) -> (B, c_out, H/4, W/4)."""
    return nn.Sequential(
        nn.Conv2d(3, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine),
    )


class CellPoseNet(nn.Module):
    """The network skeleton shared by the supernet and every standalone network of the space."""

    def __init__(self, c: int, layers: int, steps: int, reductions: int, num_keypoints: int,
                 make_cell: CellFactory, affine: bool):
        super().__init__()
        reduce_at = {layers * (j + 1) // (reductions + 1) for j in range(reductions)}
        self.stem = stem(2 * c, affine)
        self.cells, self.kinds = nn.ModuleList(), []
        self.taps: list[int] = []  # index of the last cell at each scale, shallow to deep
        c_pp, c_p, c_cur, reduction_prev = 2 * c, 2 * c, c, False
        for i in range(layers):
            kind = "reduce" if i in reduce_at else "normal"
            if kind == "reduce":
                c_cur *= 2
                self.taps.append(i - 1)
            cell = make_cell(kind, c_pp, c_p, c_cur, reduction_prev)
            self.cells.append(cell)
            self.kinds.append(kind)
            c_pp, c_p, reduction_prev = c_p, cell.out_channels, kind == "reduce"
        self.taps.append(layers - 1)
        self.fusions = nn.ModuleList()
        tap_channels = [c_pp if t < 0 else self.cells[t].out_channels for t in self.taps]
        deeper = tap_channels[-1]
        for level in range(len(self.taps) - 2, -1, -1):
            cell = make_cell("fusion", tap_channels[level], deeper, c * 2 ** level, False)
            self.fusions.append(cell)
            deeper = cell.out_channels
        self.head = HeatmapHead(deeper, num_keypoints)

    def cell_args(self, kind: str) -> tuple[Any, ...]:
        """What a cell of type `kind` gets besides its two input states (the supernet: weights)."""
        return ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)  # (B, 2C, H/4, W/4)
        features = [s0] if self.taps[0] < 0 else []
        for i, (cell, kind) in enumerate(zip(self.cells, self.kinds)):
            s0, s1 = s1, cell(s0, s1, *self.cell_args(kind))
            if i in self.taps:
                features.append(s1)
        out = features[-1]
        for cell, skip in zip(self.fusions, reversed(features[:-1])):
            out = cell(skip, out, *self.cell_args("fusion"))
        return self.head(out)  # (B, K, H/4, W/4) heatmaps


class DartsSupernet(CellPoseNet):
    """Every op on every edge; architecture weights apart from the network weights.

    `partial_channels=K` (> 1) turns on PC-DARTS: partial channels in every mixed op and, per cell
    type, `betas` (one per edge) whose softmax over each node's incoming edges weights those edges.
    None or 1 is plain DARTS (no betas).
    """

    def __init__(self, c: int, layers: int, steps: int, reductions: int, num_keypoints: int,
                 primitives: Sequence[str], partial_channels: int | None = None):
        check_partial_channels(partial_channels, cell_channels(c, reductions))
        partial = partial_channels if partial_channels is not None and partial_channels > 1 else None

        def make_cell(kind: str, c_pp: int, c_p: int, c_cur: int, red_prev: bool) -> nn.Module:
            return SearchCell(kind, c_pp, c_p, c_cur, steps, red_prev, primitives, partial)
        super().__init__(c, layers, steps, reductions, num_keypoints, make_cell, affine=False)
        self.primitives, self.steps, self.partial_channels = tuple(primitives), steps, partial
        shape = (num_edges(steps), len(primitives))
        self.alphas = nn.ParameterDict(
            {kind: nn.Parameter(1e-3 * torch.randn(shape)) for kind in CELL_TYPES})
        self.betas = None if partial is None else nn.ParameterDict(
            {kind: nn.Parameter(1e-3 * torch.randn(num_edges(steps))) for kind in CELL_TYPES})
        self._path: dict[str, tuple[torch.Tensor, list[list[int]]]] | None = None

    def cell_weights(self, kind: str) -> torch.Tensor:
        return torch.softmax(self.alphas[kind], dim=-1)

    def edge_weights(self, kind: str) -> torch.Tensor | None:
        """(edges,) betas softmaxed over each node's incoming edges; None without partial channels."""
        return None if self.betas is None else node_softmax(self.betas[kind], self.steps)

    def cell_args(self, kind: str) -> tuple[Any, ...]:
        if self._path is None:
            return self.cell_weights(kind), self.edge_weights(kind)
        onehot, active = self._path[kind]
        like = self.alphas[kind]
        if (onehot.device, onehot.dtype) != (like.device, like.dtype):  # moved once, not every step
            onehot = onehot.to(like)
            self._path[kind] = (onehot, active)
        return onehot, None, active

    def set_path(self, genotype: Genotype | None) -> None:
        """Path mode: forward runs only the genotype's ops (weight 1 each; other ops and edges are
        not computed; alphas and betas unused), so one step costs about what the standalone
        network does. None restores the continuous relaxation."""
        if genotype is None:
            self._path = None
            return
        validate_cells(genotype.genotype, self.steps, self.primitives)
        self._path = {}
        for kind in CELL_TYPES:
            onehot = path_weights(genotype.genotype[kind], self.primitives, self.steps)
            active = [row.nonzero().flatten().tolist() for row in onehot]
            self._path[kind] = (onehot, active)

    def arch_weights(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies of what the relaxation uses: softmaxed alphas per cell type, shape
        (edges, ops), and with partial channels the node-normalised betas as "beta_<kind>" (edges,)."""
        out = {kind: torch.softmax(a.detach(), dim=-1).cpu() for kind, a in self.alphas.items()}
        if self.betas is not None:
            out.update({f"beta_{kind}": node_softmax(b.detach(), self.steps).cpu()
                        for kind, b in self.betas.items()})
        return out

    def arch_parameters(self) -> list[nn.Parameter]:
        betas = [] if self.betas is None else list(self.betas.values())
        return list(self.alphas.values()) + betas

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]


def measure_edge_latency(supernet: DartsSupernet, input_size: Sequence[int], width: int, search_width: int,
                         runs: int, warmup: int) -> dict[str, torch.Tensor]:
    """The work of `DartsCellsSpace.edge_latency`: one forward pass of the supernet records each mixed
    op's input shape; each (op, channels, stride, H, W) is then built alone and timed (median)."""
    from estimators.latency import _timed_runs
    param = next(supernet.parameters())
    channels_last = param.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last) \
        and not param.is_contiguous()
    cells = [(kind, cell) for kind, cell in zip(supernet.kinds, supernet.cells)]
    cells += [("fusion", cell) for cell in supernet.fusions]
    shapes: dict[tuple[str, int, int], list[tuple[int, ...]]] = {}  # (kind, cell no., edge) -> input shape
    hooks = [mixed.register_forward_pre_hook(
        lambda _m, args, key=(kind, n, e): shapes.setdefault(key, []).append(tuple(args[0].shape)))
        for n, (kind, cell) in enumerate(cells) for e, mixed in enumerate(cell.edges)]
    was_training = supernet.training
    try:
        with torch.no_grad():
            supernet.eval()(torch.zeros(1, 3, *input_size, device=param.device))
    finally:
        supernet.train(was_training)
        for hook in hooks:
            hook.remove()
    timed: dict[tuple[str, int, int, int, int], float] = {}
    table = {kind: torch.zeros(num_edges(supernet.steps), len(supernet.primitives)) for kind in CELL_TYPES}
    for (kind, n, e), seen in shapes.items():
        _, c, h, w = seen[0]
        c = c * width // search_width
        stride = cells[n][1].stride(edge_source(e))
        for k, name in enumerate(supernet.primitives):
            if name == "none":
                continue
            key = (name, c, stride, h, w)
            if key not in timed:
                op = make_op(name, c, stride, affine=True).to(param.device).eval()
                x = torch.zeros(1, c, h, w, device=param.device)
                if channels_last:
                    op, x = op.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    timed[key] = float(torch.tensor(_timed_runs(op, x, runs, warmup)).median())
            table[kind][e, k] += timed[key]
    return table


def edge_source(edge: int) -> int:
    """The input index (0, 1: the cell's inputs; 2..: its nodes) of edge number `edge` of a cell."""
    node = 0
    while edge >= 2 + node:
        edge -= 2 + node
        node += 1
    return edge


def node_softmax(betas: torch.Tensor, steps: int) -> torch.Tensor:
    """(edges,) -> (edges,): softmax over each node's incoming edges (node i has 2 + i)."""
    sizes = [2 + i for i in range(steps)]
    return torch.cat([torch.softmax(b, dim=0) for b in torch.split(betas, sizes)])


def path_weights(edges: Sequence[Sequence[Any]], primitives: Sequence[str], steps: int) -> torch.Tensor:
    """(edges, ops) weights of one genotype cell: 1 for the chosen op on each chosen edge, else 0."""
    weights = torch.zeros(num_edges(steps), len(primitives))
    for n, (op, src) in enumerate(edges):
        weights[num_edges(n // 2) + int(src), primitives.index(op)] += 1.0
    return weights


def cell_channels(c: int, reductions: int) -> list[int]:
    """Channel counts of the searched cells: C doubles at each reduction; fusion cells reuse them."""
    return [c * 2 ** r for r in range(reductions + 1)]


def check_partial_channels(k: int | None, channels: Iterable[int]) -> None:
    """Partial channels split every cell's C into K groups, so K must divide each C."""
    channels = sorted(set(channels))
    if k is None or (isinstance(k, int) and k >= 1 and all(c % k == 0 for c in channels)):
        return
    smallest = channels[0]
    usable = [d for d in range(2, smallest + 1) if all(c % d == 0 for c in channels)]
    raise ValueError(f"partial_channels={k} must divide every cell's channel count {channels}; "
                     f"use one of {usable or 'none (init_channels has no divisor > 1)'} or null")


class DartsCellsSpace:
    """PoseNAS search space. Sizes are PoseNAS's L (`layers`) and C (`init_channels`).

    As in DARTS and PoseNAS, the search can run on a narrow proxy and the found cells be retrained
    wider: genotypes this space emits carry `retrain_channels` as their C when it is set.
    """

    name = "darts_cells"

    def __init__(self, init_channels: int = 8, layers: int = 4, steps: int = 3,
                 reductions: int = 2, num_keypoints: int = 17,
                 primitives: Sequence[str] = PRIMITIVES, retrain_channels: int | None = None,
                 max_skips: int | None = None, partial_channels: int | None = None):
        check_args(dict(init_channels=init_channels, layers=layers, steps=steps, reductions=reductions,
                        num_keypoints=num_keypoints, retrain_channels=retrain_channels, max_skips=max_skips,
                        partial_channels=partial_channels), BOUNDS)
        if not is_list(primitives) or not all(isinstance(p, str) and p in OPS for p in primitives):
            raise ValueError(f"primitives must list op names from: {', '.join(OPS)}; got {primitives!r}")
        if not 0 <= reductions < layers:
            raise ValueError(f"reductions must be in [0, layers), got {reductions}")
        self.args = dict(init_channels=init_channels, layers=layers, steps=steps,
                         reductions=reductions, num_keypoints=num_keypoints)
        self.primitives = tuple(primitives)
        self.retrain_channels = retrain_channels
        self.max_skips = max_skips  # P-DARTS-style cap on skip_connect per decoded cell (None: no cap)
        check_partial_channels(partial_channels, cell_channels(init_channels, reductions))
        self.partial_channels = partial_channels  # a supernet option only: not in genotypes, not in build

    def _net_args(self) -> tuple[int, int, int, int, int]:
        a = self.args
        return a["init_channels"], a["layers"], a["steps"], a["reductions"], a["num_keypoints"]

    def edge_latency(self, supernet: DartsSupernet, input_size: Sequence[int], runs: int = 30,
                     warmup: int = 5) -> dict[str, torch.Tensor]:
        """{cell type: (edges, ops)} forward milliseconds of each candidate op on each edge, as the
        emitted genotype's network would run it: at `retrain_channels` width (the supernet's widths
        scaled), on the supernet's device and memory format, batch 1, summed over the cells that share
        the type's architecture weights. `none` costs 0. Ops of the same shape are timed once."""
        device = next(supernet.parameters()).device
        # building the timed ops draws initial weights: without a fork, a search that measures would
        # continue on other random numbers than the same search reading a saved table
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return measure_edge_latency(supernet, input_size, self.retrain_channels or self.args["init_channels"],
                                        self.args["init_channels"], runs, warmup)

    def edge_latency_about(self, input_size: Sequence[int]) -> dict[str, Any]:
        """What an edge latency table depends on (a saved table must match it to be reused)."""
        return {"space": self.name, "primitives": list(self.primitives), "input_size": list(input_size),
                "width": self.retrain_channels or self.args["init_channels"]}

    def supernet(self) -> DartsSupernet:
        return DartsSupernet(*self._net_args(), primitives=self.primitives,
                             partial_channels=self.partial_channels)

    def _genotype(self, cells: dict[str, list[Edge]], provenance: dict | None = None) -> Genotype:
        channels = self.retrain_channels or self.args["init_channels"]
        args = {**self.args, "init_channels": channels, "primitives": list(self.primitives)}
        return Genotype(space=self.name, space_args=args,
                        genotype={k: [[op, src] for op, src in v] for k, v in cells.items()},
                        provenance=provenance or {})

    def decode(self, supernet: DartsSupernet) -> Genotype:
        """Top-2 incoming edges per node by their strongest non-`none` op, as in DARTS; with
        partial channels each edge's op weights are first scaled by its normalised beta, as in
        PC-DARTS, so the betas choose the inputs and the alphas the ops."""
        cells = {}
        arch = supernet.arch_weights()
        for kind in CELL_TYPES:
            weights = arch[kind]
            if f"beta_{kind}" in arch:
                weights = weights * arch[f"beta_{kind}"][:, None]
            edges = decode_cell(weights, self.primitives, self.args["steps"])
            if self.max_skips is not None:
                edges = cap_skips(edges, weights, self.primitives, self.max_skips)
            cells[kind] = edges
        return self._genotype(cells)

    def sample(self, rng: random.Random) -> Genotype:
        ops = [p for p in self.primitives if p != "none"]
        cells = {}
        for kind in CELL_TYPES:
            edges: list[Edge] = []
            for i in range(self.args["steps"]):
                edges += [(rng.choice(ops), src) for src in sorted(rng.sample(range(2 + i), 2))]
            cells[kind] = edges
        return self._genotype(cells)

    def validate(self, genotype: Genotype) -> None:
        validate_cells(genotype.genotype, self.args["steps"], self.primitives)

    def build(self, genotype: Genotype) -> CellPoseNet:
        self.validate(genotype)
        cells = genotype.genotype

        def make_cell(kind: str, c_pp: int, c_p: int, c_cur: int, red_prev: bool) -> nn.Module:
            edges = [(op, int(src)) for op, src in cells[kind]]
            return FixedCell(kind, c_pp, c_p, c_cur, self.args["steps"], red_prev, edges)
        return CellPoseNet(*self._net_args(), make_cell=make_cell, affine=True)


def decode_cell(weights: torch.Tensor, primitives: Sequence[str], steps: int) -> list[Edge]:
    """weights: (edges, ops) softmaxed. Keep each node's two strongest inputs, `none` excluded."""
    usable = [k for k, p in enumerate(primitives) if p != "none"]
    edges: list[Edge] = []
    offset = 0
    for i in range(steps):
        rows = weights[offset: offset + 2 + i][:, usable]  # (inputs, usable ops)
        best, arg = rows.max(dim=1)
        top2 = sorted(torch.topk(best, 2).indices.tolist())
        edges += [(primitives[usable[int(arg[j])]], j) for j in top2]
        offset += 2 + i
    return edges


def cap_skips(edges: list[Edge], weights: torch.Tensor, primitives: Sequence[str],
               max_skips: int) -> list[Edge]:
    """Keep at most `max_skips` skip_connect edges (as P-DARTS does against DARTS's collapse): the
    weakest skips, by their own weight, take their edge's best op other than none and skip."""
    if "skip_connect" not in primitives:
        return edges
    skip = primitives.index("skip_connect")
    others = [k for k, p in enumerate(primitives) if p not in ("none", "skip_connect")]
    rows = [sum(2 + i for i in range(n // 2)) + src for n, (_, src) in enumerate(edges)]  # edge -> row
    edges = list(edges)
    skips = sorted((float(weights[rows[n], skip]), n) for n, (op, _) in enumerate(edges) if op == "skip_connect")
    for _, n in skips[: max(0, len(skips) - max_skips)]:
        best = max(others, key=lambda k: float(weights[rows[n], k]))
        edges[n] = (primitives[best], edges[n][1])
    return edges


def validate_cells(cells: dict, steps: int, primitives: Sequence[str]) -> None:
    """A genotype's cells: exactly the three cell types, each valid (GenotypeError naming the field)."""
    extra = sorted(set(cells) - set(CELL_TYPES))
    if extra:
        raise GenotypeError(f"field 'genotype' has unknown cell type(s) {extra}; "
                            f"expected {list(CELL_TYPES)}")
    for kind in CELL_TYPES:
        validate_cell(cells.get(kind), kind, steps, primitives)


def validate_cell(edges: object, kind: str, steps: int, primitives: Sequence[str]) -> None:
    where = f"genotype.{kind}"
    if not isinstance(edges, list) or len(edges) != 2 * steps:
        raise GenotypeError(f"field '{where}' must list {2 * steps} [op, input] edges "
                            f"(2 per node, steps={steps})")
    for n, edge in enumerate(edges):
        node = n // 2
        if not (isinstance(edge, list) and len(edge) == 2 and isinstance(edge[0], str)
                and isinstance(edge[1], int) and not isinstance(edge[1], bool)):
            raise GenotypeError(f"field '{where}[{n}]' must be [op_name, input_index], got {edge!r}")
        if edge[0] not in primitives or edge[0] == "none":
            raise GenotypeError(f"field '{where}[{n}]': unknown op {edge[0]!r}; this space has "
                                f"{', '.join(p for p in primitives if p != 'none')}")
        if not 0 <= edge[1] < 2 + node:
            raise GenotypeError(f"field '{where}[{n}]': input {edge[1]} does not exist for node "
                                f"{node} (valid: 0..{1 + node})")
