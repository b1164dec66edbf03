"""Latency-aware DARTS (strategy.latency_weight): the per-edge op latency table of the DARTS-cell
space, and the gradient the latency term adds to the architecture step, against hand computations."""
from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import pytest
import torch

import estimators.latency
from nas.errors import UserError
from nas.pose.loss import KeypointMSELoss
from search_spaces.darts_cells import CELL_TYPES, DartsCellsSpace, edge_source
from strategies.darts import Darts


def test_edge_source_of_a_three_node_cell():
    # node 0: inputs 0, 1; node 1: 0, 1, 2; node 2: 0, 1, 2, 3 (9 edges in all)
    assert [edge_source(e) for e in range(9)] == [0, 1, 0, 1, 2, 0, 1, 2, 3]


def _fake_timer(ms_of):
    def timed(op, x, runs, warmup):
        return [ms_of(op, x)] * runs
    return timed


def test_table_sums_the_cells_of_each_type(monkeypatch):
    # layers=4, reductions=2: reduction cells at 4*1//3 = 1 and 4*2//3 = 2, normal cells at 0 and 3,
    # and two fusion cells (one per scale above the deepest); every op timed at 1 ms
    monkeypatch.setattr(estimators.latency, "_timed_runs", _fake_timer(lambda op, x: 1.0))
    space = DartsCellsSpace(init_channels=4, layers=4, steps=3, reductions=2)
    table = space.edge_latency(space.supernet(), (32, 24))
    none = space.primitives.index("none")
    for kind in CELL_TYPES:
        assert table[kind].shape == (9, len(space.primitives))
        assert torch.all(table[kind][:, none] == 0)
        others = [k for k in range(len(space.primitives)) if k != none]
        assert torch.all(table[kind][:, others] == 2.0), kind


def test_table_is_timed_at_the_retrain_width(monkeypatch):
    # the timer returns the op input's channel count; searched at C=4, retrained at C=12:
    # cell widths 12 (normal 0), 24 (reduce 1), 48 (reduce 2), 48 (normal 3); fusion 24 and 12
    monkeypatch.setattr(estimators.latency, "_timed_runs", _fake_timer(lambda op, x: float(x.shape[1])))
    space = DartsCellsSpace(init_channels=4, layers=4, steps=3, reductions=2, retrain_channels=12)
    table = space.edge_latency(space.supernet(), (32, 24))
    conv = space.primitives.index("conv_3x3")
    assert table["normal"][0, conv] == 12 + 48
    assert table["reduce"][0, conv] == 24 + 48
    assert table["fusion"][0, conv] == 24 + 12


def _strategy(latency_weight: float) -> Darts:
    torch.manual_seed(0)
    space = DartsCellsSpace(init_channels=4, layers=2, steps=2, reductions=1)
    return Darts(space, space.supernet(), KeypointMSELoss(),
                 functools.partial(torch.optim.SGD, lr=0.05), functools.partial(torch.optim.Adam, lr=3e-3),
                 epochs=1, steps_per_epoch=1, latency_weight=latency_weight, input_size=(32, 32))


def test_latency_gradient_matches_the_hand_derivative():
    # One priced entry: conv_3x3 on normal edge 0 at 1 ms, all else free. With uniform alphas over the
    # 8 ops other than none, expected latency E = 1/8 and d log E / d alpha = (1 - 1/8) for that op,
    # -1/8 for the other 7 of the edge, 0 for none and every other edge. Added: weight x loss x that.
    s = _strategy(latency_weight=0.5)
    prims = s.supernet.primitives
    s.latency = {k: torch.zeros(5, len(prims)) for k in CELL_TYPES}
    s.latency["normal"][0, prims.index("conv_3x3")] = 1.0
    with torch.no_grad():
        for a in s.supernet.alphas.values():
            a.zero_()
            a.grad = torch.zeros_like(a)
    s._add_latency_grads(loss=2.0)
    g = s.supernet.alphas["normal"].grad
    expected = torch.zeros_like(g)
    expected[0, :] = -0.5 * 2.0 / 8
    expected[0, prims.index("none")] = 0.0
    expected[0, prims.index("conv_3x3")] = 0.5 * 2.0 * 7 / 8
    torch.testing.assert_close(g, expected)
    assert torch.all(s.supernet.alphas["reduce"].grad == 0)
    assert s.last_latency == pytest.approx(1 / 8)


def test_latency_weight_pushes_the_slow_op_down_and_survives_resume():
    s = _strategy(latency_weight=1.0)
    batch = {"image": torch.randn(2, 3, 32, 32), "target": torch.rand(2, 17, 8, 8),
             "target_weight": torch.ones(2, 17, 1)}
    out = s.step(batch, batch)
    assert out["expected_latency_ms"] > 0  # measured on this machine at the first architecture step
    table = {k: v.clone() for k, v in s.latency.items()}
    fresh = _strategy(latency_weight=1.0)
    fresh.load_state_dict(s.state_dict())
    assert all(torch.equal(fresh.latency[k], table[k]) for k in CELL_TYPES)  # not re-measured


def test_latency_weight_refused_where_it_cannot_apply():
    with pytest.raises(UserError, match="latency_weight"):
        _strategy(latency_weight=-1.0)
    no_timing = SimpleNamespace(name="no_timing")  # a gradient space that cannot time its ops
    supernet = DartsCellsSpace(init_channels=4, layers=2, steps=2, reductions=1).supernet()
    with pytest.raises(UserError, match="latency_weight"):
        Darts(no_timing, supernet, KeypointMSELoss(), functools.partial(torch.optim.SGD, lr=0.05),
              functools.partial(torch.optim.Adam, lr=3e-3), epochs=1, steps_per_epoch=1, latency_weight=1.0)


def test_saved_table_is_reused_and_refused_when_it_does_not_fit(tmp_path, monkeypatch):
    # the timer returns 1 ms for every op: a table of cell counts, written by the measuring search
    monkeypatch.setattr(estimators.latency, "_timed_runs", _fake_timer(lambda op, x: 1.0))
    first = _strategy(latency_weight=1.0)
    first.run_dir = str(tmp_path)
    measured = first._latency_table()
    saved = tmp_path / "edge_latency.json"
    assert saved.exists()
    monkeypatch.setattr(estimators.latency, "_timed_runs", _fake_timer(lambda op, x: 99.0))  # would differ
    torch.manual_seed(0)
    space = DartsCellsSpace(init_channels=4, layers=2, steps=2, reductions=1)
    again = Darts(space, space.supernet(), KeypointMSELoss(), functools.partial(torch.optim.SGD, lr=0.05),
                  functools.partial(torch.optim.Adam, lr=3e-3), epochs=1, steps_per_epoch=1,
                  latency_weight=1.0, latency_table=str(saved), input_size=(32, 32))
    assert all(torch.equal(again.latency[k], measured[k]) for k in CELL_TYPES)  # loaded, not timed

    def build(table, **space_args):
        torch.manual_seed(0)
        sp = DartsCellsSpace(init_channels=4, layers=2, steps=2, reductions=1, **space_args)
        return Darts(sp, sp.supernet(), KeypointMSELoss(), functools.partial(torch.optim.SGD, lr=0.05),
                     functools.partial(torch.optim.Adam, lr=3e-3), epochs=1, steps_per_epoch=1,
                     latency_weight=1.0, latency_table=str(table), input_size=(32, 32))
    with pytest.raises(UserError, match="width=4.*8"):  # measured at C=4, this search emits C=8
        build(saved, retrain_channels=8)
    with pytest.raises(UserError, match="no such file"):
        build(tmp_path / "missing.json")
    zeros = tmp_path / "zeros.json"  # a table that prices nothing: log(expected latency) undefined
    doc = json.loads(saved.read_text())
    doc["cells"] = {k: [[0.0] * len(row) for row in rows] for k, rows in doc["cells"].items()}
    zeros.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="no positive time"):
        build(zeros)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "posenas.edge_latency", "version": 1, "cells": ')
    with pytest.raises(UserError, match="not a readable JSON"):
        build(broken)


def test_timing_the_ops_leaves_the_random_numbers_alone():
    # a search that measures must draw the same random numbers afterwards as one that loads a table
    space = DartsCellsSpace(init_channels=4, layers=2, steps=2, reductions=1)
    supernet = space.supernet()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    space.edge_latency(supernet, (32, 24), runs=1, warmup=0)
    assert torch.equal(torch.rand(3), expected)
