"""DARTS cells: a DAG of `steps` nodes over two input states, with an op on every chosen edge.

Node i (counting the two inputs as nodes 0 and 1) sums one op applied to each of its incoming
states; the cell outputs the concatenation of its intermediate nodes (`steps * C` channels).
`SearchCell` puts a mixed op on every possible edge (the supernet); `FixedCell` keeps only the
genotype's two edges per node (the standalone network).

PC-DARTS (Xu et al., 2020) partial channels, an option of the supernet: with `partial=K` each mixed
op runs its candidates on the first C/K channels only, the rest bypass them, and a channel shuffle
mixes the two, so search memory drops about K-fold; the cell then weights each incoming edge by
its node-normalised `edge_weights` (PC-DARTS's edge normalisation) to steady the choice of inputs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
# ShuffleNet's shuffle, as PC-DARTS uses it: channel g * n + i moves to i * groups + g (n = C / groups),
# so the channels that bypassed one edge's ops are spread over the part the next edge computes.
from torch.nn.functional import channel_shuffle

from search_spaces.ops import FactorizedReduce, ReLUConvBN, make_op

Edge = tuple[str, int]  # (op name, index of the input node)
Path = Sequence[Sequence[int]]  # per edge: indices of the ops to evaluate (empty: skip the edge)


def num_edges(steps: int) -> int:
    """Edges of a fully connected cell: node i has 2 + i inputs."""
    return sum(2 + i for i in range(steps))


def preprocess(c_in: int, c_out: int, halve: bool, affine: bool) -> nn.Module:
    """Bring an input state to `c_out` channels (and half resolution when `halve`)."""
    if halve:
        return FactorizedReduce(c_in, c_out, affine)
    return ReLUConvBN(c_in, c_out, 1, 1, 0, affine)


class MixedOp(nn.Module):
    """Weighted sum of every candidate op on one edge (the DARTS continuous relaxation).

    `partial=K` (> 1): PC-DARTS partial channels; the ops see the first C/K channels, the other
    channels bypass them (a 2x2 max-pool on stride-2 edges, ceil mode so odd sizes match the ops)
    and a K-group channel shuffle follows the concatenation.
    """

    def __init__(self, channels: int, stride: int, primitives: Sequence[str], partial: int | None = None):
        super().__init__()
        self.k = partial if partial is not None and partial > 1 else 1
        self.ops = nn.ModuleList(make_op(p, channels // self.k, stride, affine=False) for p in primitives)
        if self.k > 1:
            self.bypass = nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                active: Sequence[int] | None = None) -> torch.Tensor:
        """`active`: evaluate only these ops (path mode); None: all of them."""
        if self.k == 1:
            if active is None:
                return sum(w * op(x) for w, op in zip(weights, self.ops))
            return sum(weights[i] * self.ops[i](x) for i in active)
        c = x.shape[1] // self.k
        part = x[:, :c]  # (B, C/K, H, W) through the ops
        chosen = range(len(self.ops)) if active is None else active
        mixed = sum(weights[i] * self.ops[i](part) for i in chosen)
        return channel_shuffle(torch.cat([mixed, self.bypass(x[:, c:])], dim=1), self.k)


class _CellBase(nn.Module):
    """Input preprocessing shared by both cell kinds.

    kind: "normal" (stride 1), "reduce" (edges from the inputs have stride 2) or "fusion"
    (s1 is a deeper, half-resolution state that is upsampled to s0's size before the DAG).
    """

    def __init__(self, kind: str, c_pp: int, c_p: int, c: int, steps: int,
                 reduction_prev: bool, affine: bool):
        super().__init__()
        self.kind, self.steps = kind, steps
        self.pre0 = preprocess(c_pp, c, reduction_prev and kind != "fusion", affine)
        self.pre1 = preprocess(c_p, c, False, affine)
        self.out_channels = steps * c

    def inputs(self, s0: torch.Tensor, s1: torch.Tensor) -> list[torch.Tensor]:
        s0, s1 = self.pre0(s0), self.pre1(s1)
        if self.kind == "fusion":  # (B, C, h, w) -> (B, C, 2h, 2w) aligned to the skip state
            s1 = F.interpolate(s1, size=s0.shape[-2:], mode="bilinear", align_corners=False)
        return [s0, s1]

    def stride(self, source: int) -> int:
        return 2 if self.kind == "reduce" and source < 2 else 1


class SearchCell(_CellBase):
    def __init__(self, kind: str, c_pp: int, c_p: int, c: int, steps: int,
                 reduction_prev: bool, primitives: Sequence[str], partial: int | None = None):
        super().__init__(kind, c_pp, c_p, c, steps, reduction_prev, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(c, self.stride(j), primitives, partial) for i in range(steps) for j in range(2 + i))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None = None, path: Path | None = None) -> torch.Tensor:
        """weights: (edges, ops); edge_weights: (edges,) node-normalised (partial channels) or None;
        path: the ops each edge evaluates (path mode; edges with none are not computed)."""
        states = self.inputs(s0, s1)
        offset = 0
        for i in range(self.steps):
            if path is not None:
                node = sum(self.edges[offset + j](h, weights[offset + j], path[offset + j])
                           for j, h in enumerate(states) if path[offset + j])
            elif edge_weights is None:
                node = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            else:
                node = sum(edge_weights[offset + j] * self.edges[offset + j](h, weights[offset + j])
                           for j, h in enumerate(states))
            offset += len(states)
            states.append(node)
        return torch.cat(states[2:], dim=1)


class FixedCell(_CellBase):
    latency_block = True  # timed as one unit by latency lookup tables

    def __init__(self, kind: str, c_pp: int, c_p: int, c: int, steps: int,
                 reduction_prev: bool, edges: Sequence[Edge]):
        super().__init__(kind, c_pp, c_p, c, steps, reduction_prev, affine=True)
        self.sources = [int(src) for _, src in edges]
        self.ops = nn.ModuleList(make_op(op, c, self.stride(src), affine=True) for op, src in edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = self.inputs(s0, s1)
        for i in range(self.steps):
            a, b = 2 * i, 2 * i + 1
            states.append(self.ops[a](states[self.sources[a]]) + self.ops[b](states[self.sources[b]]))
        return torch.cat(states[2:], dim=1)
