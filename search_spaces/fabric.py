"""Pose Neural Fabrics Search (PNFS, Yang et al., arXiv 1909.07068): one searched fabric per body part.

The keypoints are split into parts (`parts`: a layout name from PART_LAYOUTS or explicit lists of keypoint
indices); each part has its own fabric that predicts only that part's heatmaps, written into their
keypoint channels (a keypoint in two parts gets the sum). A fabric is a grid of cells: layers
j = 0..depth-1, scales 1/4, 1/8, 1/16, 1/32 with base_width x 1, 2, 4, 8 channels; layer j holds cells
at its first min(j + 2, 4, depth - j) scales (the fabric widens, then narrows to the one 1/4 cell
that feeds the head).

Links: a cell reads three tensors of the previous layer: "same" (the same scale, identity), "finer"
(the next finer scale through a 3x3 stride-2 conv + BN) and "coarser" (the next coarser scale through
a 1x1 conv + BN, bilinearly resized to this scale's size, so sizes that do not halve evenly, e.g.
72 -> 18 -> 9 -> 5 -> 3, still line up). A link whose source the previous layer lacks reads a stand-in:
the same-scale tensor, or where the previous layer has no cell at this scale either (a widening
layer), the finer link's tensor. The stand-in is the same module, not a copy, and a decoded genotype
names only links whose source exists.
beta (per cell, 3 logits): softmax, x3, weighted sum of the three links, ReLU. x3 and the op weights'
x n_ops below make the relaxation start at the plain sums that the built network uses.

Cell: `input_nodes` mixed edges on that input (ops from `ops`, PNFS's default none, skip_connect,
dil_conv_3x3, sep_conv_3x3), summed, then a 1x1 conv with bias. alpha is (input_nodes, n_ops) per
part (`alpha_sharing: part`, PNFS's one-shot setting) or per cell (`cell`); either way
`supernet.alphas[part]` is 2-D (rows = edges, cell-major with per-cell sharing), like darts_cells.

Backbone and cut: `backbone` (search_spaces/fabric_backbones.py) gives four maps at 1/4..1/32 that stand in
for fabric layer cut-1: `small` (a CPU stand-in, `backbone_width` x 1, 2, 4, 8 channels), PNFS's
`mobilenet_v2` and `resnet50` (torchvision's definitions) or `hrnet_w32` (stem..stage 3 of this project's
HRNet); ImageNet weights load by name from a local file (`nas.retrain ... pretrained=FILE`). Each map that
layer `cut` reads is projected to the cell width by a 1x1 conv (with bias) per part. The layers cut..depth-1
are searched. cut >= 1.
Head (per part): the 1/4 cell of the last layer -> a 1x1 conv to the part's K heatmaps (`plain`), or
PNFS's vector head (`vector`: ReLU, 1x1 conv to K x 8, heatmap = |v|^2 / (1 + |v|^2)).

decode(): per cell, each edge keeps the argmax of its alpha row (`none` excluded) and any op whose share is
>= `op_share` (default 1.0: the argmax alone); the kept links are the strongest (by beta's softmax share,
stand-ins' shares added to the link they stand in for) and any whose share is >= `link_share`. Pruning is
explicit (PNFS prunes only when a softmax underflows to exactly 0): walking back from the head, a cell that
no kept cell reads through a kept link is removed, with its links; the built network then has no op that
nothing uses. `unpruned()` is the genotype that keeps everything: PNFS's trained networks, whose sizes the
published genotype files reproduce.

PNFS's released checkpoints were built with two mixed edges per cell, fed one input, so one edge never runs
(its weights count in the published parameter figures, not in the FLOPs): `idle_edges=1` builds such edges
(copies of edge 0's ops, never called) so the published sizes can be reproduced; 0 for anything new.

Genotype (readable): {"parts": [{"keypoints": [5, 6, ...], "cells": [{"layer": 2, "scale": 0,
"ops": ["sep_conv_3x3"], "links": ["same", "coarser"]}, ...]}, ...]}; an entry of "ops" (one per edge) is an op
name or a list of names that the built edge sums. The fixed settings (depth, cut, widths, backbone, head, ops,
input_nodes, idle_edges, parts, alpha_sharing) are the genotype's space_args.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nas.genotype import Genotype, GenotypeError
from nas.pose.head import init_head
from search_spaces.bounds import Bound, BoundError, check_args, is_int, is_list
from search_spaces.fabric_backbones import BACKBONES, backbone_channels, make_backbone
from search_spaces.cells import MixedOp
from search_spaces.ops import OPS, make_op

SCALES = 4  # 1/4, 1/8, 1/16, 1/32
LINKS = ("same", "finer", "coarser")
HEADS = ("plain", "vector")
SHARING = ("part", "cell")
PNFS_OPS = ("none", "skip_connect", "dil_conv_3x3", "sep_conv_3x3")
CellPath = tuple[Sequence[str], Sequence[Sequence[int]]]  # path mode: a cell's links, op indices per edge
VECTOR_DIM = 8  # PNFS's 2-D vector representation: 8 numbers per keypoint and pixel

# Keypoint lists per part. COCO: PNFS's own lists. MPII: PNFS's lists (in its own joint order) mapped to the
# standard MPII order of nas/data/mpii.py (0 r_ankle, 1 r_knee, 2 r_hip, 3 l_hip, 4 l_knee, 5 l_ankle,
# 6 pelvis, 7 thorax, 8 upper_neck, 9 head_top, 10 r_wrist, 11 r_elbow, 12 r_shoulder, 13 l_shoulder,
# 14 l_elbow, 15 l_wrist).
PART_LAYOUTS: dict[str, list[list[int]]] = {
    "coco_1": [list(range(17))],
    "coco_3": [[5, 6, 7, 8, 9, 10], [0, 1, 2, 3, 4], [11, 12, 13, 14, 15, 16]],  # upper limbs, head, legs
    "coco_5": [[7, 9], [8, 10], [13, 14, 15, 16], [0, 1, 2, 3, 4, 5, 6], [11, 12]],
    "mpii_3": [[10, 11, 12, 13, 14, 15], [7, 8, 9], [0, 1, 2, 3, 4, 5, 6]],  # arms+shoulders, head, legs+pelvis
    "mpii_5": [[14, 15], [10, 11], [0, 1, 4, 5], [7, 8, 9, 12, 13], [2, 3, 6]],
}

BOUNDS = {
    "depth": Bound(2, 16, "PNFS's deepest fabric has 7 layers; x2"),
    "cut": Bound(1, 15, "PNFS cuts at most 4 layers; below depth"),
    "base_width": Bound(1, 256, "PNFS's 1/4-scale cells are 64 wide; x4"),
    "backbone_width": Bound(1, 256, "ResNet's 1/4 stage is 256 wide"),
    "input_nodes": Bound(1, 8, "PNFS's released checkpoints have 2 mixed edges per cell; x4"),
    "idle_edges": Bound(0, 8, "PNFS's released checkpoints have 1 edge per cell that never runs; x8"),
    "partial_channels": Bound(1, 256, "PC-DARTS uses K=4; K divides base_width", optional=True),
    "num_keypoints": Bound(1, 256, "COCO-WholeBody has 133 keypoints"),
}


def layer_cells(depth: int, layer: int) -> int:
    """How many scales (from 1/4 on) layer `layer` of a `depth`-layer fabric holds."""
    return min(layer + 2, SCALES, depth - layer)


def link_sources(depth: int, cut: int, layer: int, scale: int) -> dict[str, str]:
    """For each of LINKS, the link whose tensor it reads: itself when its source scale exists in the
    previous layer, else its stand-in ("same", or "finer" when the same scale is missing too)."""
    prev = SCALES if layer == cut else layer_cells(depth, layer - 1)  # the backbone stands in for cut-1
    exists = {"same": scale < prev, "finer": 0 <= scale - 1 < prev, "coarser": scale + 1 < prev}
    stand_in = "same" if exists["same"] else "finer"
    return {name: name if exists[name] else stand_in for name in LINKS}


def source_scale(link: str, scale: int) -> int:
    return scale + {"same": 0, "finer": -1, "coarser": 1}[link]


def cell_positions(depth: int, cut: int) -> list[tuple[int, int]]:
    """(layer, scale) of every searched cell, in forward order."""
    return [(j, s) for j in range(cut, depth) for s in range(layer_cells(depth, j))]


class Link(nn.Module):
    """One of a cell's inputs: identity, 3x3 stride-2 conv + BN (finer), or 1x1 conv + BN + resize (coarser)."""

    def __init__(self, kind: str, c_in: int, c_out: int):
        super().__init__()
        self.kind = kind
        if kind == "same":
            self.body: nn.Module = nn.Identity()
        else:
            kernel, stride = (3, 2) if kind == "finer" else (1, 1)
            self.body = nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        y = self.body(x)
        if tuple(y.shape[-2:]) != tuple(size):  # coarser: always; finer: only if a size did not halve as a conv does
            y = F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=True)
        return y


class FabricCell(nn.Module):
    """A cell of the fabric: its links, `len(edge_ops)` edges on the fused input, summed, then a 1x1 conv.

    `edge_ops[e]` lists the candidate ops of edge e (all of `ops` in the supernet, one op when built);
    `links` are the links it computes (their names), `route` maps each of LINKS to the computed link it
    reads (the supernet weights all three by beta; a built cell sums its kept links once each)."""

    def __init__(self, layer: int, scale: int, channels: Sequence[int], links: Sequence[str],
                 route: dict[str, str], edge_ops: Sequence[Sequence[str]], affine: bool, idle: int = 0,
                 partial: int | None = None):
        super().__init__()
        self.scale, self.route = scale, dict(route)
        c = channels[scale]
        self.links = nn.ModuleDict({name: Link(name, channels[source_scale(name, scale)], c) for name in links})
        self.partial = partial is not None and partial > 1
        if self.partial:  # PC-DARTS: each mixed edge's ops see c/K channels, the rest bypass them (supernet only)
            self.edges = nn.ModuleList(MixedOp(c, 1, ops, partial) for ops in edge_ops)
        else:
            self.edges = nn.ModuleList(nn.ModuleList(make_op(op, c, 1, affine) for op in ops) for ops in edge_ops)
        if idle:  # built, never run: PNFS's released cells (input_nodes_num=2 fed one input), for their sizes
            self.idle = nn.ModuleList(nn.ModuleList(make_op(op, c, 1, affine) for op in edge_ops[0])
                                      for _ in range(idle))
        self.out = nn.Conv2d(c, c, 1)

    def forward(self, prev: dict[int, torch.Tensor], size: Sequence[int], beta: torch.Tensor | None = None,
                alpha: torch.Tensor | None = None, path: CellPath | None = None) -> torch.Tensor:
        """beta: (3,) softmaxed link weights, alpha: (edges, ops) softmaxed op weights; None: plain sums.
        path (the supernet's path mode): (links, op indices per edge); only those run, summed plainly."""
        if path is not None:
            return self._path_forward(prev, size, *path)
        tensors = {name: link(prev[source_scale(name, self.scale)], size) for name, link in self.links.items()}
        if beta is None:
            x = sum(tensors.values())
        else:
            x = sum(len(LINKS) * beta[k] * tensors[self.route[name]] for k, name in enumerate(LINKS))
        x = F.relu(x)
        if alpha is None:  # a built cell: each edge sums its kept op(s)
            h = sum(op(x) for ops in self.edges for op in ops)
        else:
            n_ops = alpha.shape[-1]
            if self.partial:
                h = sum(edge(x, n_ops * alpha[e]) for e, edge in enumerate(self.edges))
            else:
                h = sum(n_ops * alpha[e, k] * op(x) for e, ops in enumerate(self.edges) for k, op in enumerate(ops))
        return self.out(h)

    def _path_forward(self, prev: dict[int, torch.Tensor], size: Sequence[int], links: Sequence[str],
                      active: Sequence[Sequence[int]]) -> torch.Tensor:
        x = F.relu(sum(self.links[name](prev[source_scale(name, self.scale)], size) for name in links))
        if self.partial:
            return self.out(sum(edge(x, x.new_ones(len(edge.ops)), active[e]) for e, edge in enumerate(self.edges)))
        return self.out(sum(self.edges[e][k](x) for e, ks in enumerate(active) for k in ks))


class PartHead(nn.Module):
    """The 1/4 features of a part -> its K heatmaps: a 1x1 conv, or PNFS's vector representation."""

    def __init__(self, channels: int, keypoints: int, kind: str):
        super().__init__()
        self.kind, self.keypoints = kind, keypoints
        self.conv = nn.Conv2d(channels, keypoints * (VECTOR_DIM if kind == "vector" else 1), 1)
        init_head(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "plain":
            return self.conv(x)
        v = self.conv(F.relu(x))
        b, _, h, w = v.shape
        sq = v.reshape(b, self.keypoints, VECTOR_DIM, h, w).pow(2).sum(dim=2)
        return sq / (1.0 + sq)


class PartFabric(nn.Module):
    """One part's fabric above the cut: projections of the backbone maps, cells, head."""

    def __init__(self, cells: dict[tuple[int, int], FabricCell], projected: Sequence[int],
                 backbone_channels: Sequence[int], channels: Sequence[int], keypoints: int, head: str):
        super().__init__()
        self.order = sorted(cells)
        self.cells = nn.ModuleDict({f"L{j}_S{s}": cells[(j, s)] for j, s in self.order})
        self.proj = nn.ModuleDict({f"S{s}": nn.Conv2d(backbone_channels[s], channels[s], 1) for s in projected})
        self.head = PartHead(channels[0], keypoints, head)

    def forward(self, maps: list[torch.Tensor], beta: torch.Tensor | None = None,
                alpha: Callable[[int], torch.Tensor] | None = None,
                path: dict[tuple[int, int], CellPath] | None = None) -> torch.Tensor:
        """beta: (cells, 3) softmaxed; alpha(i): the (edges, ops) weights of cell number i (forward order);
        path: the cells to run (a member's), each with its links and ops; the other cells are skipped."""
        sizes = [m.shape[-2:] for m in maps]
        prev = {int(key[1:]): proj(maps[int(key[1:])]) for key, proj in self.proj.items()}
        layer, cur = self.order[0][0], {}
        for i, (j, s) in enumerate(self.order):
            if j != layer:
                prev, cur, layer = cur, {}, j
            if path is not None and (j, s) not in path:
                continue
            cell = self.cells[f"L{j}_S{s}"]
            if path is not None:
                cur[s] = cell(prev, sizes[s], path=path[(j, s)])
            else:
                cur[s] = cell(prev, sizes[s], None if beta is None else beta[i], None if alpha is None else alpha(i))
        return self.head(cur[0])


class FabricNet(nn.Module):
    """Backbone + one fabric per part; (B, 3, H, W) -> (B, K, H/4, W/4), overlapping parts summed."""

    def __init__(self, backbone: nn.Module, fabrics: Sequence[PartFabric], parts: Sequence[Sequence[int]],
                 num_keypoints: int):
        super().__init__()
        self.backbone, self.fabrics, self.num_keypoints = backbone, nn.ModuleList(fabrics), num_keypoints
        for p, kps in enumerate(parts):
            self.register_buffer(f"index_{p}", torch.tensor(kps, dtype=torch.long), persistent=False)

    def part_args(self, part: int) -> tuple[Any, ...]:
        """What part `part`'s fabric gets besides the backbone maps (the supernet: beta and alpha)."""
        return ()

    def load_pretrained(self, path: str) -> dict[str, list[str]]:
        """ImageNet weights for the backbone (space_args.backbone mobilenet_v2, resnet50 or hrnet_w32)."""
        return self.backbone.load_pretrained(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(x)
        out = None
        for p, fabric in enumerate(self.fabrics):
            heat = fabric(maps, *self.part_args(p))
            if out is None:
                out = heat.new_zeros(heat.shape[0], self.num_keypoints, *heat.shape[-2:])
            out = out.index_add(1, getattr(self, f"index_{p}"), heat)
        return out


class FabricSupernet(FabricNet):
    """Every link and every op of every cell; alphas and betas apart from the network weights."""

    def __init__(self, space: "FabricSpace"):
        a = space.args
        depth, cut, edges = a["depth"], a["cut"], a["input_nodes"]
        positions = cell_positions(depth, cut)
        fabrics = []
        for kps in space.parts:
            cells = {}
            for j, s in positions:
                route = link_sources(depth, cut, j, s)
                cells[(j, s)] = FabricCell(j, s, space.channels, sorted(set(route.values()), key=LINKS.index), route,
                                           [space.ops] * edges, affine=False, partial=a["partial_channels"])
            fabrics.append(PartFabric(cells, range(min(SCALES, layer_cells(depth, cut) + 1)), space.backbone_channels,
                                      space.channels, len(kps), a["head"]))
        super().__init__(make_backbone(a["backbone"], a["backbone_width"]), fabrics, space.parts, a["num_keypoints"])
        self.primitives, self.input_nodes, self.sharing = tuple(space.ops), edges, a["alpha_sharing"]
        self._space, self._path = space, None
        rows = edges * (len(positions) if self.sharing == "cell" else 1)
        self.alphas = nn.ParameterDict(
            {f"p{p}": nn.Parameter(1e-3 * torch.randn(rows, len(space.ops))) for p in range(len(space.parts))})
        self.betas = nn.ParameterDict(
            {f"p{p}": nn.Parameter(torch.zeros(len(positions), len(LINKS))) for p in range(len(space.parts))})

    def set_path(self, genotype: Genotype | None) -> None:
        """Path mode (random search with weight sharing): forward runs only the genotype's cells, links and ops,
        each summed with weight 1 (alphas and betas unused), about the cost of the built network. None restores
        the continuous relaxation."""
        if genotype is None:
            self._path = None
            return
        self._space.validate(genotype)
        self._path = [{(c["layer"], c["scale"]): (list(c["links"]),
                                                  [[self.primitives.index(o) for o in edge_ops(e)] for e in c["ops"]])
                       for c in part["cells"]} for part in genotype.genotype["parts"]]

    def cell_alpha(self, weights: torch.Tensor, i: int) -> torch.Tensor:
        """The (edges, ops) rows of cell number i in a part's (rows, ops) alpha table."""
        return weights if self.sharing == "part" else weights[i * self.input_nodes:(i + 1) * self.input_nodes]

    def part_args(self, part: int) -> tuple[Any, ...]:
        if self._path is not None:
            return None, None, self._path[part]
        alpha = torch.softmax(self.alphas[f"p{part}"], dim=-1)
        return torch.softmax(self.betas[f"p{part}"], dim=-1), lambda i: self.cell_alpha(alpha, i)

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values()) + list(self.betas.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def arch_weights(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies: per part "p<i>" the softmaxed alphas (rows, ops) and "beta_p<i>" the
        per-cell softmaxed betas, flattened cell-major to (cells x 3,) (same, finer, coarser per cell)."""
        out = {k: torch.softmax(a.detach(), dim=-1).cpu() for k, a in self.alphas.items()}
        out.update({f"beta_{k}": torch.softmax(b.detach(), dim=-1).flatten().cpu() for k, b in self.betas.items()})
        return out

    def arch_weight_labels(self) -> dict[str, list[str]]:
        """A name per entry of arch_weights(), for the trajectory plot (arch_weights.jsonl's "labels"): per
        alpha row of "p<i>" its edge ("edge 0", or "L3 S1 e0" with alpha_sharing=cell), per beta of
        "beta_p<i>" its cell and link ("L3 S1 finer"). Cells in the order the betas' rows are read."""
        order = self.fabrics[0].order
        if self.sharing == "cell":
            rows = [f"L{j} S{s} e{e}" for j, s in order for e in range(self.input_nodes)]
        else:
            rows = [f"edge {e}" for e in range(self.input_nodes)]
        links = [f"L{j} S{s} {link}" for j, s in order for link in LINKS]
        out: dict[str, list[str]] = {}
        for key in self.alphas:
            out[key], out[f"beta_{key}"] = list(rows), list(links)
        return out


def _plain_parts(parts: Any, num_keypoints: int) -> list[list[int]]:
    """The keypoint lists of `parts` (a layout name or explicit lists), checked; BoundError names the entry."""
    if isinstance(parts, str):
        if parts not in PART_LAYOUTS:
            raise BoundError("parts", f"unknown layout {parts!r}; known: {', '.join(PART_LAYOUTS)}, or lists")
        lists = PART_LAYOUTS[parts]
    elif is_list(parts) and parts and all(is_list(p) for p in parts):
        lists = [list(p) for p in parts]
    else:
        raise BoundError("parts", f"must be a layout name or a list of keypoint-index lists, got {parts!r}")
    if len(lists) > num_keypoints:
        raise BoundError("parts", f"{len(lists)} parts for {num_keypoints} keypoints")
    for p, kps in enumerate(lists):
        if not kps or len(set(map(repr, kps))) != len(kps):
            raise BoundError(f"parts[{p}]", f"must be a non-empty list of distinct keypoint indices, got {kps!r}")
        for i, k in enumerate(kps):
            if not is_int(k) or not 0 <= k < num_keypoints:
                raise BoundError(f"parts[{p}][{i}]", f"{k!r} is not a keypoint index in [0, {num_keypoints})")
    missing = sorted(set(range(num_keypoints)) - {k for kps in lists for k in kps})
    if missing:
        raise BoundError("parts", f"keypoints {missing} are in no part (their heatmaps would always be 0)")
    return [[int(k) for k in kps] for kps in lists]


def edge_ops(entry: str | list[str]) -> list[str]:
    """A genotype edge's op(s): one name, or a list of names that the built edge sums (PNFS's unpruned edge)."""
    return [entry] if isinstance(entry, str) else list(entry)


def _edge_ok(entry: Any, usable: Sequence[str]) -> bool:
    if isinstance(entry, str):
        return entry in usable
    return is_list(entry) and bool(entry) and len(set(map(repr, entry))) == len(entry) and \
        all(isinstance(o, str) and o in usable for o in entry)


class FabricSpace:
    """PNFS's body-part fabrics (see the module docstring). CPU-sized defaults: 3 COCO parts, depth 5, cut 2
    (6 searched cells per part, as in PNFS's depth 6 / cut 3), width 8."""

    name = "fabric"

    def __init__(self, depth: int = 5, cut: int = 2, base_width: int = 8, backbone_width: int = 8,
                 input_nodes: int = 1, num_keypoints: int = 17, parts: str | list[list[int]] = "coco_3",
                 ops: Sequence[str] = PNFS_OPS, head: str = "plain", alpha_sharing: str = "part",
                 link_share: float = 0.4, backbone: str = "small", op_share: float = 1.0, idle_edges: int = 0,
                 partial_channels: int | None = None):
        check_args(dict(depth=depth, cut=cut, base_width=base_width, backbone_width=backbone_width,
                        input_nodes=input_nodes, num_keypoints=num_keypoints, idle_edges=idle_edges,
                        partial_channels=partial_channels), BOUNDS)
        if partial_channels is not None and partial_channels > 1 and base_width % partial_channels:
            raise BoundError("partial_channels", f"{partial_channels} must divide base_width {base_width} (the "
                                                 "1/4 cells' channels; the coarser ones are multiples)")
        if not 1 <= cut < depth:
            raise BoundError("cut", f"{cut} must be in [1, depth - 1 = {depth - 1}] (layers cut..depth-1 are searched)")
        self.parts = _plain_parts(parts, num_keypoints)
        if not is_list(ops) or not ops or not all(isinstance(o, str) and o in OPS for o in ops) \
                or len(set(ops)) != len(ops) or all(o == "none" for o in ops):
            raise ValueError(f"ops must list distinct op names (not only none) from: {', '.join(OPS)}; got {ops!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if alpha_sharing not in SHARING:
            raise ValueError(f"alpha_sharing must be one of {', '.join(SHARING)}, got {alpha_sharing!r}")
        for name, share in (("link_share", link_share), ("op_share", op_share)):
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
                raise ValueError(f"{name} must be a number in (0, 1], got {share!r}")
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        self.ops = [str(o) for o in ops]
        self.args = dict(depth=depth, cut=cut, base_width=base_width, backbone_width=backbone_width,
                         input_nodes=input_nodes, num_keypoints=num_keypoints,
                         parts=parts if isinstance(parts, str) else self.parts, ops=self.ops, head=head,
                         alpha_sharing=alpha_sharing, link_share=float(link_share), backbone=backbone,
                         op_share=float(op_share), idle_edges=idle_edges, partial_channels=partial_channels)
        self.channels = [base_width * 2 ** s for s in range(SCALES)]
        self.backbone_channels = backbone_channels(backbone, backbone_width)
        self.positions = cell_positions(depth, cut)

    # ---- the supernet and its decoding ------------------------------------------------------------
    def supernet(self) -> FabricSupernet:
        return FabricSupernet(self)

    def edge_latency(self, supernet: FabricSupernet, input_size: Sequence[int], runs: int = 30,
                     warmup: int = 5) -> dict[str, torch.Tensor]:
        """{part "p<i>": (alpha rows, ops)} forward milliseconds of each candidate op on each edge (latency-aware
        DARTS): each op alone at its cell's channels and scale size, batch 1, on the supernet's device and memory
        format, summed over the cells that share an alpha row. `none` costs 0; ops of one shape are timed once.
        The links' convs are not priced (beta has no latency term)."""
        from estimators.latency import _timed_runs
        param = next(supernet.parameters())
        channels_last = param.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last) \
            and not param.is_contiguous()
        was_training = supernet.training
        try:
            with torch.no_grad():
                sizes = [m.shape[-2:] for m in supernet.eval().backbone(torch.zeros(1, 3, *input_size).to(param))]
        finally:
            supernet.train(was_training)
        timed: dict[tuple[str, int, int, int], float] = {}
        table = {k: torch.zeros(a.shape) for k, a in supernet.alphas.items()}
        devices = [param.device] if param.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # building the timed ops must not shift the search's RNG
            for i, (_, s) in enumerate(self.positions):
                c, (h, w) = self.channels[s], sizes[s]
                for k, name in enumerate(self.ops):
                    key = (name, c, int(h), int(w))
                    if name == "none":
                        continue
                    if key not in timed:
                        op = make_op(name, c, 1, affine=True).to(param.device).eval()
                        x = torch.zeros(1, c, int(h), int(w), device=param.device)
                        if channels_last:
                            op, x = op.to(memory_format=torch.channels_last), x.contiguous(
                                memory_format=torch.channels_last)
                        with torch.inference_mode():
                            timed[key] = float(torch.tensor(_timed_runs(op, x, runs, warmup)).median())
                    for t in table.values():
                        t[supernet.cell_alpha(torch.arange(t.shape[0]), i), k] += timed[key]
        return table

    def edge_latency_about(self, input_size: Sequence[int]) -> dict[str, Any]:
        """What an edge latency table depends on (a saved table must match it to be reused)."""
        return {"space": self.name, "primitives": list(self.ops), "input_size": list(input_size),
                "width": self.args["base_width"]}

    def _genotype(self, parts: list[dict[tuple[int, int], dict[str, list[str]]]]) -> Genotype:
        body = [{"keypoints": list(kps), "cells": [{"layer": j, "scale": s, **cells[(j, s)]} for j, s in sorted(cells)]}
                for kps, cells in zip(self.parts, parts)]
        return Genotype(space=self.name, space_args=dict(self.args), genotype={"parts": body})

    def prune(self, cells: dict[tuple[int, int], dict[str, list[str]]]) -> dict[tuple[int, int], dict[str, list[str]]]:
        """Only the cells the head reaches through kept links (walking back from the last layer's 1/4 cell)."""
        depth, cut = self.args["depth"], self.args["cut"]
        reached = {(depth - 1, 0)}
        for j in range(depth - 1, cut, -1):
            for (layer, s) in [p for p in reached if p[0] == j]:
                reached |= {(j - 1, source_scale(link, s)) for link in cells[(layer, s)]["links"]}
        return {p: cells[p] for p in sorted(reached)}

    def decode(self, supernet: FabricSupernet) -> Genotype:
        """Per cell the argmax op of each edge (`none` excluded) and the kept links, then pruning."""
        usable = [k for k, o in enumerate(self.ops) if o != "none"]
        arch = supernet.arch_weights()
        depth, cut, n_edges = self.args["depth"], self.args["cut"], self.args["input_nodes"]
        parts = []
        for p in range(len(self.parts)):
            alpha, beta = arch[f"p{p}"], arch[f"beta_p{p}"].reshape(len(self.positions), len(LINKS))
            cells = {}
            for i, (j, s) in enumerate(self.positions):
                rows = supernet.cell_alpha(alpha, i)[:, usable]
                ops = [self._kept_ops(rows[e], usable) for e in range(n_edges)]
                share: dict[str, float] = {}
                for k, name in enumerate(link_sources(depth, cut, j, s).values()):
                    share[name] = share.get(name, 0.0) + float(beta[i, k])
                best = max(share, key=share.__getitem__)
                kept = [n for n in LINKS if n == best or share.get(n, 0.0) >= self.args["link_share"]]
                cells[(j, s)] = {"ops": ops, "links": kept}
            parts.append(self.prune(cells))
        return self._genotype(parts)

    def unpruned(self) -> Genotype:
        """Every cell with every link it has and every op (but none) on each edge: PNFS's trained networks,
        which its prune step leaves whole; the published-size genotypes are this."""
        depth, cut, n_edges = self.args["depth"], self.args["cut"], self.args["input_nodes"]
        ops = [o for o in self.ops if o != "none"]
        edge = ops[0] if len(ops) == 1 else ops
        cells = {(j, s): {"ops": [edge] * n_edges,
                          "links": sorted(set(link_sources(depth, cut, j, s).values()), key=LINKS.index)}
                 for j, s in self.positions}
        return self._genotype([self.prune(cells) for _ in self.parts])

    def _kept_ops(self, shares: torch.Tensor, usable: list[int]) -> str | list[str]:
        """An edge's argmax op plus any op whose share is >= op_share: one name, or a list (summed)."""
        best = int(shares.argmax())
        kept = [self.ops[usable[k]] for k in range(len(usable))
                if k == best or float(shares[k]) >= self.args["op_share"]]
        return kept[0] if len(kept) == 1 else kept

    def sample(self, rng: random.Random) -> Genotype:
        """Random ops per edge (per part with alpha_sharing=part), a random non-empty subset of each cell's
        existing links, then pruning."""
        ops = [o for o in self.ops if o != "none"]
        depth, cut, n_edges = self.args["depth"], self.args["cut"], self.args["input_nodes"]
        parts = []
        for _ in self.parts:
            shared = [rng.choice(ops) for _ in range(n_edges)]
            cells = {}
            for j, s in self.positions:
                real = sorted(set(link_sources(depth, cut, j, s).values()), key=LINKS.index)
                links = sorted(rng.sample(real, rng.randint(1, len(real))), key=LINKS.index)
                cell_ops = shared if self.args["alpha_sharing"] == "part" else [rng.choice(ops) for _ in range(n_edges)]
                cells[(j, s)] = {"ops": list(cell_ops), "links": links}
            parts.append(self.prune(cells))
        return self._genotype(parts)

    # ---- genotypes ------------------------------------------------------------------------------
    def validate(self, genotype: Genotype) -> None:
        g = genotype.genotype
        if not isinstance(g, dict) or set(g) != {"parts"}:
            raise GenotypeError("field 'genotype' must be {\"parts\": [one entry per body part]}")
        if not isinstance(g["parts"], list) or len(g["parts"]) != len(self.parts):
            raise GenotypeError(f"field 'genotype.parts' must list {len(self.parts)} parts (space_args.parts)")
        for p, part in enumerate(g["parts"]):
            self._validate_part(part, p)

    def _validate_part(self, part: Any, p: int) -> None:
        where = f"genotype.parts[{p}]"
        if not isinstance(part, dict) or set(part) != {"keypoints", "cells"}:
            raise GenotypeError(f"field '{where}' must be {{\"keypoints\": [...], \"cells\": [...]}}")
        if part["keypoints"] != self.parts[p]:
            raise GenotypeError(f"field '{where}.keypoints' is {part['keypoints']!r}; space_args.parts gives "
                                f"{self.parts[p]}")
        if not isinstance(part["cells"], list):
            raise GenotypeError(f"field '{where}.cells' must be a list of cells")
        depth, cut = self.args["depth"], self.args["cut"]
        cells: dict[tuple[int, int], dict] = {}
        for i, cell in enumerate(part["cells"]):
            here = f"{where}.cells[{i}]"
            if not isinstance(cell, dict) or set(cell) != {"layer", "scale", "ops", "links"}:
                raise GenotypeError(f"field '{here}' must be {{\"layer\", \"scale\", \"ops\", \"links\"}}")
            j, s = cell["layer"], cell["scale"]
            if not is_int(j) or not cut <= j < depth:
                raise GenotypeError(f"field '{here}.layer': {j!r} is not a searched layer ({cut}..{depth - 1})")
            if not is_int(s) or not 0 <= s < layer_cells(depth, j):
                raise GenotypeError(f"field '{here}.scale': layer {j} has scales 0..{layer_cells(depth, j) - 1}, "
                                    f"got {s!r}")
            if (j, s) in cells:
                raise GenotypeError(f"field '{here}': a second cell at layer {j}, scale {s}")
            ops = cell["ops"]
            usable = [o for o in self.ops if o != "none"]
            if not isinstance(ops, list) or len(ops) != self.args["input_nodes"] or \
                    not all(_edge_ok(o, usable) for o in ops):
                raise GenotypeError(f"field '{here}.ops' must list {self.args['input_nodes']} edge(s), each an op "
                                    f"from {', '.join(usable)} or a list of distinct ones (summed); got {ops!r}")
            real = set(link_sources(depth, cut, j, s).values())
            links = cell["links"]
            if not isinstance(links, list) or not links or len(set(map(repr, links))) != len(links) \
                    or not all(isinstance(n, str) and n in real for n in links):
                raise GenotypeError(f"field '{here}.links' must be distinct links from "
                                    f"{sorted(real, key=LINKS.index)} (those this cell has); got {links!r}")
            if (self.args["alpha_sharing"] == "part" and cells and
                    ops != next(iter(cells.values()))["ops"]):
                raise GenotypeError(f"field '{here}.ops': with alpha_sharing=part every cell of a part has the "
                                    "same ops")
            cells[(j, s)] = cell
        if (depth - 1, 0) not in cells:
            raise GenotypeError(f"field '{where}.cells' lacks the head's cell (layer {depth - 1}, scale 0)")
        for (j, s), cell in cells.items():
            for link in cell["links"] if j > cut else ():
                if (j - 1, source_scale(link, s)) not in cells:
                    raise GenotypeError(f"field '{where}.cells': the cell at layer {j}, scale {s} links {link!r} "
                                        f"to layer {j - 1}, scale {source_scale(link, s)}, which is not a cell")
        unreached = sorted(set(cells) - set(self.prune(cells)))
        if unreached:
            raise GenotypeError(f"field '{where}.cells': (layer, scale) {unreached} do not reach the head "
                                "(a decoded genotype holds only cells that do)")

    def build(self, genotype: Genotype) -> FabricNet:
        """The discrete fabric: only the genotype's cells, links (plain sums) and ops (one per edge)."""
        self.validate(genotype)
        a = self.args
        fabrics = []
        for kps, part in zip(self.parts, genotype.genotype["parts"]):
            cells = {}
            for c in part["cells"]:
                j, s = c["layer"], c["scale"]
                cells[(j, s)] = FabricCell(j, s, self.channels, c["links"], {n: n for n in c["links"]},
                                           [edge_ops(op) for op in c["ops"]], affine=True, idle=a["idle_edges"])
            projected = sorted({source_scale(n, c["scale"]) for c in part["cells"] if c["layer"] == a["cut"]
                                for n in c["links"]})
            fabrics.append(PartFabric(cells, projected, self.backbone_channels, self.channels, len(kps), a["head"]))
        return FabricNet(make_backbone(a["backbone"], a["backbone_width"]), fabrics, self.parts, a["num_keypoints"])
