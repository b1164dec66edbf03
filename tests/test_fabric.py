"""The PNFS body-part fabric space: shapes, part layouts, hand-checked decode and pruning, genotype round trip,
validation, sampling, and DARTS steps that move its alphas and betas."""
from __future__ import annotations

import functools
import math
import random
import re
import time

import pytest
import torch

from nas.genotype import Genotype, GenotypeError, load, save
from nas.data.mpii import MPII_JOINTS
from nas.pose.loss import KeypointMSELoss
from nas.spaces import build_space, resolve
from search_spaces.bounds import BoundError
from search_spaces.fabric import FabricSpace, PART_LAYOUTS
from strategies.darts import Darts


def _shares_logits(*shares: float) -> torch.Tensor:
    """Beta logits whose softmax is exactly `shares` (up to float rounding)."""
    return torch.log(torch.tensor(shares))


def test_supernet_and_sample_map_images_to_quarter_heatmaps():
    space = FabricSpace()  # the yaml's defaults: depth 5, cut 2, width 8, coco_3
    net = space.supernet()
    assert net(torch.randn(2, 3, 96, 72)).shape == (2, 17, 24, 18)  # 72/32 = 2.25: sizes are resized, not x2
    assert net(torch.randn(1, 3, 64, 48)).shape == (1, 17, 16, 12)
    built = space.build(space.sample(random.Random(0)))
    assert built(torch.randn(2, 3, 96, 72)).shape == (2, 17, 24, 18)


def test_the_yaml_default_builds_through_the_registry():
    space = build_space("fabric", {})
    assert space.args["depth"] == 5 and space.args["parts"] == "coco_3"
    assert space.build(space.sample(random.Random(1)))(torch.randn(1, 3, 96, 72)).shape == (1, 17, 24, 18)


def test_supernet_forward_backward_at_batch_8_is_well_under_a_second():
    net, x = FabricSpace().supernet(), torch.randn(8, 3, 96, 72)
    net(x).sum().backward()  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        net(x).sum().backward()
        times.append(time.perf_counter() - start)
    assert sorted(times)[1] < 0.5


def test_geometry_and_arch_parameter_shapes():
    """depth 5, cut 2: layers 2, 3, 4 hold min(j+2, 4, 5-j) = 3, 2, 1 cells, so 6 per part (PNFS's count)."""
    space = FabricSpace()
    assert space.positions == [(2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (4, 0)]
    net = space.supernet()
    assert [tuple(b.shape) for b in net.betas.values()] == [(6, 3)] * 3
    assert [tuple(a.shape) for a in net.alphas.values()] == [(1, 4)] * 3
    per_cell = FabricSpace(alpha_sharing="cell", input_nodes=2).supernet()
    assert [tuple(a.shape) for a in per_cell.alphas.values()] == [(12, 4)] * 3  # 6 cells x 2 edges
    # depth 7, cut 4 (PNFS's other config): layers 4, 5, 6 hold 3, 2, 1 cells
    assert FabricSpace(depth=7, cut=4).positions == [(4, 0), (4, 1), (4, 2), (5, 0), (5, 1), (6, 0)]


def test_arch_and_weight_parameters_partition_the_parameters():
    net = FabricSpace(alpha_sharing="cell").supernet()
    arch, weights = net.arch_parameters(), net.weight_parameters()
    ids_a, ids_w = {id(p) for p in arch}, {id(p) for p in weights}
    assert len(arch) == 6 and not ids_a & ids_w  # alpha and beta for each of 3 parts
    assert ids_a | ids_w == {id(p) for p in net.parameters()}
    assert set(net.arch_weights()) == {"p0", "p1", "p2", "beta_p0", "beta_p1", "beta_p2"}


def test_parts_write_their_keypoint_channels_and_overlaps_add():
    """Head convs with zero weights output their biases: part 0 -> channels 0, 1; part 1 -> 1, 2."""
    space = FabricSpace(num_keypoints=3, parts=[[0, 1], [1, 2]])
    net = space.build(space.sample(random.Random(0)))
    with torch.no_grad():
        for fabric, bias in zip(net.fabrics, ([1.0, 2.0], [10.0, 20.0])):
            fabric.head.conv.weight.zero_()
            fabric.head.conv.bias.copy_(torch.tensor(bias))
    out = net.eval()(torch.randn(1, 3, 32, 32))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 12.0, 20.0]))


def test_vector_head_is_squared_norm_over_one_plus_it():
    """v = (1, ..., 1) in 8 dimensions: |v|^2 = 8, heatmap 8 / 9."""
    space = FabricSpace(head="vector")
    net = space.build(space.sample(random.Random(0)))
    with torch.no_grad():
        for fabric in net.fabrics:
            fabric.head.conv.weight.zero_()
            fabric.head.conv.bias.fill_(1.0)
            assert fabric.head.conv.out_channels == 8 * fabric.head.keypoints
    out = net.eval()(torch.randn(1, 3, 32, 32))
    assert torch.allclose(out, torch.full_like(out, 8 / 9))


def test_layouts_are_pnfs_parts():
    coco = PART_LAYOUTS["coco_5"]
    assert coco == [[7, 9], [8, 10], [13, 14, 15, 16], [0, 1, 2, 3, 4, 5, 6], [11, 12]]
    # PNFS's MPII lists, in PNFS's joint order (reference note), mapped by joint name to nas/data/mpii.py's order
    pnfs = ["head_top", "upper_neck", "thorax", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist",
            "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle", "pelvis"]
    ours = {name: MPII_JOINTS.index(name) for name in pnfs}
    published = {"mpii_3": [[3, 4, 5, 6, 7, 8], [0, 1, 2], [9, 10, 11, 12, 13, 14, 15]],
                 "mpii_5": [[5, 7], [6, 8], [11, 12, 13, 14], [0, 1, 2, 3, 4], [15, 9, 10]]}
    for name, parts in published.items():
        assert PART_LAYOUTS[name] == [sorted(ours[pnfs[i]] for i in part) for part in parts]
    for name in PART_LAYOUTS:
        FabricSpace(parts=name, num_keypoints=16 if name.startswith("mpii") else 17)


def _hand_set_supernet(space: FabricSpace):
    """Part 0: the head cell (4,0) keeps only `coarser` -> (3,1), which keeps only `coarser` -> (2,2), a cell
    that no other kept cell reads; (3,0) keeps `same`, but nothing kept reads (3,0). Survivors: (2,2), (3,1),
    (4,0). Part 1: (4,0)'s shares are same 0.30, finer 0.25, coarser 0.45; at scale 0 `finer` stands in for
    `same`, so same has 0.55 (strongest) and coarser 0.45 >= link_share 0.4: both kept -> (3,0) and (3,1);
    (3,0) keeps same -> (2,0), (3,1) keeps finer -> (2,0). Survivors: (2,0), (3,0), (3,1), (4,0).
    Part 2: all betas zero: every share is 1/3 < 0.4 except the strongest; ties go to `same` (first):
    (4,0) -> (3,0) -> (2,0)."""
    net = space.supernet()
    strong = {"same": _shares_logits(0.98, 0.01, 0.01), "finer": _shares_logits(0.01, 0.98, 0.01),
              "coarser": _shares_logits(0.01, 0.01, 0.98)}
    row = space.positions.index
    with torch.no_grad():
        b0, b1 = net.betas["p0"], net.betas["p1"]
        b0[row((4, 0))], b0[row((3, 1))], b0[row((3, 0))] = strong["coarser"], strong["coarser"], strong["same"]
        b1[row((4, 0))] = _shares_logits(0.30, 0.25, 0.45)
        b1[row((3, 0))], b1[row((3, 1))] = strong["same"], strong["finer"]
        for a in net.alphas.values():  # ops: none, skip_connect, dil_conv_3x3, sep_conv_3x3
            a.copy_(torch.tensor([[5.0, 0.0, 2.0, 1.0]]))  # none strongest, excluded: dil_conv_3x3
        net.alphas["p2"].copy_(torch.tensor([[0.0, 3.0, 2.0, 1.0]]))
    return net


def test_decode_keeps_links_and_prunes_cells_as_worked_out_by_hand():
    space = FabricSpace()
    genotype = space.decode(_hand_set_supernet(space)).genotype
    cells = [{(c["layer"], c["scale"]): c["links"] for c in part["cells"]} for part in genotype["parts"]]
    assert cells[0] == {(2, 2): ["same"], (3, 1): ["coarser"], (4, 0): ["coarser"]}
    assert cells[1] == {(2, 0): ["same"], (3, 0): ["same"], (3, 1): ["finer"], (4, 0): ["same", "coarser"]}
    assert cells[2] == {(2, 0): ["same"], (3, 0): ["same"], (4, 0): ["same"]}
    ops = [{tuple(c["ops"]) for c in part["cells"]} for part in genotype["parts"]]
    assert ops == [{("dil_conv_3x3",)}, {("dil_conv_3x3",)}, {("skip_connect",)}]
    assert [part["keypoints"] for part in genotype["parts"]] == PART_LAYOUTS["coco_3"]


def test_link_share_is_configurable():
    """At share 0.5, part 1's coarser link (0.45) is no longer kept, and with it (3,1) is pruned."""
    space = FabricSpace(link_share=0.5)
    part1 = space.decode(_hand_set_supernet(space)).genotype["parts"][1]["cells"]
    assert {(c["layer"], c["scale"]): c["links"] for c in part1} == {(2, 0): ["same"], (3, 0): ["same"],
                                                                        (4, 0): ["same"]}


def test_built_network_has_only_the_kept_cells_links_and_ops(tmp_path):
    space = FabricSpace()
    genotype = space.decode(_hand_set_supernet(space))
    genotype.input_size, genotype.heatmap_size = (96, 72), (24, 18)
    loaded = load(save(genotype, tmp_path / "g.json"))
    net = resolve(loaded).build(loaded)
    assert not any("alpha" in n or "beta" in n for n, _ in net.named_parameters())
    assert sorted(net.fabrics[0].cells) == ["L2_S2", "L3_S1", "L4_S0"]
    assert sorted(net.fabrics[0].cells["L4_S0"].links) == ["coarser"]
    assert sorted(net.fabrics[0].proj) == ["S2"]  # (2,2) reads the backbone's 1/16 map only
    assert sorted(net.fabrics[1].cells["L4_S0"].links) == ["coarser", "same"]
    assert [len(ops) for ops in net.fabrics[0].cells["L2_S2"].edges] == [1]
    assert net(torch.randn(2, 3, 96, 72)).shape == (2, 17, 24, 18)


def _genotype(space: FabricSpace) -> Genotype:
    g = space.sample(random.Random(3))
    g.genotype = {"parts": [dict(p, cells=[dict(c) for c in p["cells"]]) for p in g.genotype["parts"]]}
    return g


@pytest.mark.parametrize("change, field", [
    (lambda g: g.update(parts={}), "genotype.parts"),
    (lambda g: g["parts"].pop(), "genotype.parts"),
    (lambda g: g["parts"][1].update(keypoints=[0, 1]), "genotype.parts[1].keypoints"),
    (lambda g: g["parts"][0]["cells"][-1].pop("links"), "genotype.parts[0].cells[-1]"),
    (lambda g: g["parts"][0]["cells"][-1].update(scale=3), "genotype.parts[0].cells[-1].scale"),
    (lambda g: g["parts"][0]["cells"][-1].update(layer="4"), "genotype.parts[0].cells[-1].layer"),
    (lambda g: g["parts"][0]["cells"][-1].update(ops=["none"]), "genotype.parts[0].cells[-1].ops"),
    (lambda g: g["parts"][0]["cells"][-1].update(ops=["sep_conv_3x3", "sep_conv_3x3"]),
     "genotype.parts[0].cells[-1].ops"),
    (lambda g: g["parts"][0]["cells"][-1].update(links=[]), "genotype.parts[0].cells[-1].links"),
    (lambda g: g["parts"][0]["cells"][-1].update(links=["finer"]), "genotype.parts[0].cells[-1].links"),
    (lambda g: g["parts"][0]["cells"].pop(), "genotype.parts[0].cells"),
])
def test_validate_names_the_field(change, field):
    space = FabricSpace()
    g = _genotype(space)
    n = len(g.genotype["parts"][0]["cells"])
    change(g.genotype)
    with pytest.raises(GenotypeError, match=re.escape(field.replace("[-1]", f"[{n - 1}]"))):
        space.validate(g)


def test_validate_rejects_cells_that_do_not_reach_the_head_and_dangling_links():
    space = FabricSpace()
    g = space.decode(_hand_set_supernet(space))  # part 0 holds (2,2), (3,1), (4,0)
    cells = g.genotype["parts"][0]["cells"]
    cells.append({"layer": 2, "scale": 0, "ops": ["dil_conv_3x3"], "links": ["same"]})  # reaches nothing
    with pytest.raises(GenotypeError, match=re.escape("genotype.parts[0].cells': (layer, scale) [(2, 0)]")):
        space.validate(g)
    cells.pop()
    cells[1]["links"] = ["same"]  # (3,1) would read (2,1), not a cell
    with pytest.raises(GenotypeError, match="layer 2, scale 1, which is not a cell"):
        space.validate(g)


def test_part_sharing_means_one_op_list_per_part():
    space = FabricSpace()
    g = space.decode(_hand_set_supernet(space))
    g.genotype["parts"][0]["cells"][0]["ops"] = ["sep_conv_3x3"]
    with pytest.raises(GenotypeError, match=re.escape("genotype.parts[0].cells[1].ops")):
        space.validate(g)
    FabricSpace(alpha_sharing="cell").validate(g)


@pytest.mark.parametrize("kwargs", [dict(), dict(depth=7, cut=1, input_nodes=2, alpha_sharing="cell",
                                                  parts="coco_5", head="vector")])
def test_samples_validate_build_and_vary(kwargs):
    space = FabricSpace(**kwargs)
    seen = set()
    for seed in range(12):
        g = space.sample(random.Random(seed))
        space.validate(g)
        seen.add(repr(g.genotype))
        if seed < 3:
            assert space.build(g)(torch.randn(1, 3, 64, 48)).shape == (1, 17, 16, 12)
    assert len(seen) == 12


def test_widening_layer_reads_the_finer_link_where_the_same_scale_is_missing():
    """depth 7, cut 1: layer 1 has 3 cells, layer 2 has 4: cell (2,3) has no same-scale or coarser source;
    both stand in with the finer link, so its only real link is `finer`."""
    space = FabricSpace(depth=7, cut=1)
    net = space.supernet()
    cell = net.fabrics[0].cells["L2_S3"]
    assert sorted(cell.links) == ["finer"] and cell.route == {"same": "finer", "finer": "finer", "coarser": "finer"}
    g = space.decode(net)
    for part in g.genotype["parts"]:
        for c in part["cells"]:
            if (c["layer"], c["scale"]) == (2, 3):
                assert c["links"] == ["finer"]


@pytest.mark.parametrize("kwargs, key", [
    (dict(base_width=10 ** 6), "base_width"), (dict(depth=True), "depth"), (dict(cut=5), "cut"),
    (dict(parts=[[0, 1], [2, 99]], num_keypoints=3), "parts[1][1]"), (dict(parts=[[0, 1]], num_keypoints=3), "parts"),
    (dict(parts="coco_4"), "parts"),
])
def test_out_of_bounds_space_args_are_refused(kwargs, key):
    with pytest.raises(BoundError) as err:
        FabricSpace(**kwargs)
    assert err.value.key == key
    with pytest.raises(GenotypeError, match=re.escape(f"space_args.{key}")):
        build_space("fabric", kwargs)


def _darts(unrolled: bool) -> Darts:
    torch.manual_seed(0)
    space = FabricSpace(depth=4, cut=2, base_width=4, backbone_width=4)
    return Darts(space, space.supernet(), KeypointMSELoss(),
                 functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=3e-4),
                 functools.partial(torch.optim.Adam, lr=3e-3), epochs=1, steps_per_epoch=2, unrolled=unrolled)


@pytest.mark.parametrize("unrolled", [False, True])
def test_a_darts_step_moves_alphas_and_betas(unrolled):
    g = torch.Generator().manual_seed(0)
    batch = lambda: {"image": torch.randn(2, 3, 32, 32, generator=g), "target": torch.rand(2, 17, 8, 8, generator=g),
                     "target_weight": torch.ones(2, 17, 1)}
    s = _darts(unrolled)
    before = {n: p.detach().clone() for n, p in s.supernet.named_parameters() if n.startswith(("alphas", "betas"))}
    out = s.step(batch(), batch())
    assert math.isfinite(out["arch_loss"])
    after = dict(s.supernet.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)  # every part's alpha and beta moved


@pytest.mark.parametrize("sharing, rows", [("part", 1), ("cell", 6)])
def test_edge_latency_prices_every_op_but_none_on_every_alpha_row(sharing, rows):
    """What latency-aware DARTS (the default search strategy) needs: a table shaped like each part's alphas."""
    space = FabricSpace(alpha_sharing=sharing)
    net = space.supernet()
    table = space.edge_latency(net, (64, 48), runs=1, warmup=0)
    assert set(table) == set(net.alphas) and all(tuple(t.shape) == (rows, 4) for t in table.values())
    assert all(bool((t[:, 0] == 0).all()) and bool((t[:, 1:] > 0).all()) for t in table.values())
    assert space.edge_latency_about((64, 48))["primitives"] == list(space.ops)


def test_op_share_keeps_every_op_above_it_and_the_built_edge_sums_them():
    """Alpha logits (none, skip, dil, sep) = (5, 0, 2, 1): softmax shares 0.930, 0.0063, 0.0463, 0.0170. With
    op_share 0.01 the edge keeps dil (argmax without none) and sep (0.0171 >= 0.01), not skip (0.0063); with
    0.02 dil alone."""
    for share, expected in ((0.01, ["dil_conv_3x3", "sep_conv_3x3"]), (0.02, "dil_conv_3x3")):
        space = FabricSpace(op_share=share)
        genotype = space.decode(_hand_set_supernet(space))
        assert {json_ops(c) for c in genotype.genotype["parts"][0]["cells"]} == {json_ops({"ops": [expected]})}
    space = FabricSpace(op_share=0.01)
    net = space.build(space.decode(_hand_set_supernet(space)))
    edge = net.fabrics[0].cells["L4_S0"].edges[0]
    assert [type(op).__name__ for op in edge] == ["DilConv", "SepConv"]
    x = torch.randn(1, 8, 6, 5)
    assert torch.allclose(net.fabrics[0].cells["L4_S0"].out(edge[0](x) + edge[1](x)),
                          net.fabrics[0].cells["L4_S0"].out(sum(op(x) for op in edge)))


def json_ops(cell: dict) -> str:
    return repr(cell["ops"])


def test_unpruned_keeps_every_cell_link_and_op():
    """depth 5, cut 2: layers 2, 3, 4 hold 3, 2, 1 cells; layer 2 reads the backbone's four maps, so (2,0) has
    same + coarser, (2,1) and (2,2) all three; (3,0) same + coarser, (3,1) all three; (4,0) same + coarser."""
    space = FabricSpace()
    genotype = space.unpruned()
    for part in genotype.genotype["parts"]:
        assert {(c["layer"], c["scale"]): len(c["links"]) for c in part["cells"]} == \
            {(2, 0): 2, (2, 1): 3, (2, 2): 3, (3, 0): 2, (3, 1): 3, (4, 0): 2}
        assert all(c["ops"] == [["skip_connect", "dil_conv_3x3", "sep_conv_3x3"]] for c in part["cells"])
    space.validate(genotype)


def test_partial_channels_run_a_quarter_of_the_channels_through_the_ops():
    """PC-DARTS in the fabric's supernet: K=4 at base width 8 -> the 1/4 cells' ops see 2 channels, the
    1/8 cells' 4; the supernet still maps images to heatmaps and a DARTS step moves alphas and betas."""
    space = FabricSpace(depth=4, cut=2, base_width=8, backbone_width=4, partial_channels=4)
    net = space.supernet()
    sep = net.fabrics[0].cells["L2_S0"].edges[0].ops[space.ops.index("sep_conv_3x3")]
    assert sep[0][1].weight.shape == (2, 1, 3, 3)  # depthwise over 8 / 4 channels
    assert net.fabrics[0].cells["L2_S1"].edges[0].ops[space.ops.index("sep_conv_3x3")][0][1].weight.shape[0] == 4
    assert net(torch.randn(2, 3, 64, 48)).shape == (2, 17, 16, 12)
    s = Darts(space, net, KeypointMSELoss(), functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
              functools.partial(torch.optim.Adam, lr=3e-3), epochs=1, steps_per_epoch=2)
    g = torch.Generator().manual_seed(0)
    batch = lambda: {"image": torch.randn(2, 3, 32, 32, generator=g), "target": torch.rand(2, 17, 8, 8, generator=g),
                     "target_weight": torch.ones(2, 17, 1)}
    before = {n: p.detach().clone() for n, p in net.named_parameters() if n.startswith(("alphas", "betas"))}
    s.step(batch(), batch())
    assert all(not torch.equal(before[n], p) for n, p in net.named_parameters() if n in before)
    genotype = space.decode(net)
    assert space.build(genotype)(torch.randn(1, 3, 64, 48)).shape == (1, 17, 16, 12)  # full width when built
    with pytest.raises(BoundError, match="divide base_width"):
        FabricSpace(base_width=6, partial_channels=4)


def test_path_mode_runs_only_the_members_cells_links_and_ops():
    """depth 3, cut 2: one searched cell, (2,0). Path links [same, coarser], ops dil + sep: each part's heatmaps
    are head(out(dil(r) + sep(r))) with r = relu(proj_S0(m0) + coarser(proj_S1(m1))), written by hand from the
    supernet's own modules. A member with the coarser link and skip alone trains neither the ops nor the 1/4
    projection."""
    space = FabricSpace(depth=3, cut=2, base_width=4, backbone_width=4)
    net = space.supernet().eval()
    cells = [{"layer": 2, "scale": 0, "ops": [["dil_conv_3x3", "sep_conv_3x3"]], "links": ["same", "coarser"]}]
    genotype = Genotype(space="fabric", space_args=dict(space.args),
                        genotype={"parts": [{"keypoints": kps, "cells": cells} for kps in space.parts]})
    x = torch.randn(2, 3, 64, 48)
    net.set_path(genotype)
    out = net(x)
    maps = net.backbone(x)
    expected = torch.zeros_like(out)
    for p, (kps, fabric) in enumerate(zip(space.parts, net.fabrics)):
        cell = fabric.cells["L2_S0"]
        r = torch.relu(fabric.proj["S0"](maps[0]) + cell.links["coarser"](fabric.proj["S1"](maps[1]), maps[0].shape[-2:]))
        dil, sep = (cell.edges[0][space.ops.index(o)] for o in ("dil_conv_3x3", "sep_conv_3x3"))
        expected[:, kps] += fabric.head(cell.out(dil(r) + sep(r)))
    assert torch.allclose(out, expected, atol=1e-6)
    other = [{"layer": 2, "scale": 0, "ops": ["skip_connect"], "links": ["coarser"]}]
    net.set_path(Genotype(space="fabric", space_args=dict(space.args),
                          genotype={"parts": [{"keypoints": kps, "cells": other} for kps in space.parts]}))
    net.train()
    net(x).sum().backward()
    assert net.alphas["p0"].grad is None and net.betas["p0"].grad is None
    grads = {n for n, p in net.named_parameters() if p.grad is not None}
    assert not any(".edges.0.2." in n or ".edges.0.3." in n or "proj.S0" in n for n in grads)  # dil, sep, same
    assert {"fabrics.0.proj.S1.weight", "fabrics.0.cells.L2_S0.links.coarser.body.0.weight"} <= grads
    net.set_path(None)
    assert not torch.allclose(net.eval()(x), out)  # the relaxation again (beta and alpha weights, all ops)


def test_the_yaml_default_is_sized_like_the_kept_darts_cells_genotype():
    """The CPU default is meant to compare with darts_cells at equal cost: members of the yaml's fabric
    (base width 24, backbone 16) cost 0.5-1.5x the FLOPs of the kept darts_cells genotype at 96x72."""
    from estimators.complexity import count_gflops
    from tests.helpers import REPO_ROOT
    kept = load(REPO_ROOT / "genotypes" / "darts_cells_synthetic_seed0.json")
    reference = count_gflops(resolve(kept).build(kept).eval(), (96, 72))
    space = build_space("fabric", {})
    for seed in range(3):
        member = space.build(space.sample(random.Random(seed))).eval()
        assert 0.5 < count_gflops(member, (96, 72)) / reference < 1.5
