"""Every search space in conf/search_space/ is tested here without editing this file."""
from __future__ import annotations

import random

import pytest
import torch

from nas.genotype import Genotype, GenotypeError
from nas.pose.loss import final_heatmaps
from nas.spaces import build_space, space_names
from search_spaces.darts_cells import DartsCellsSpace, decode_cell

TINY = {"darts_cells": dict(init_channels=4, layers=3, steps=2, reductions=1),
        "vipnas_resnet": dict(width_choices=[[8, 16], [16]], depth_choices=[[1, 2], [1]], strides=[1, 2],
                              head_channel_choices=[8, 16]),
        "vipnas_mbv3": dict(width_choices=[[8], [8, 16]], depth_choices=[[1], [1, 2]], strides=[2, 2],
                            activations=["relu", "hswish"], head_channel_choices=[8, 16])}
TINY["temporal"] = dict(light_space_args=TINY["vipnas_mbv3"], cycle_choices=[1, 2])


def tiny_space(name: str):
    return build_space(name, TINY.get(name, {}))


@pytest.fixture(params=space_names())
def space(request):
    return tiny_space(request.param)


def _images(batch: int = 2, size: tuple[int, int] = (64, 48), space=None) -> torch.Tensor:
    """Images (B, 3, H, W); for a space of video networks (`takes_clips`) clips of 3 frames (B, 3, 3, H, W)."""
    if getattr(space, "takes_clips", False):
        return torch.randn(batch, 3, 3, *size)
    return torch.randn(batch, 3, *size)


def _heatmap_shape(space, batch: int = 2) -> tuple:
    frames = (3,) if getattr(space, "takes_clips", False) else ()
    return (batch, *frames, space.args["num_keypoints"], 16, 12)


def test_supernet_gives_quarter_resolution_heatmaps(space):
    out = final_heatmaps(space.supernet()(_images(space=space)))  # a multi-output network's prediction is its last
    assert out.shape == _heatmap_shape(space)


def test_sampled_genotype_builds_a_standalone_network(space):
    genotype = space.sample(random.Random(0))
    space.validate(genotype)
    net = space.build(genotype)
    assert final_heatmaps(net(_images(space=space))).shape == _heatmap_shape(space)
    assert not hasattr(net, "arch_parameters")


def test_decode_gives_a_valid_member(space):
    genotype = space.decode(space.supernet())
    space.validate(genotype)
    assert isinstance(genotype, Genotype)


def test_standalone_network_is_smaller_than_the_supernet(space):
    """Weight-sharing supernets hold every member: gradient ones (arch_parameters) every op of every
    edge, one-shot ones (set_path, the ViPNAS spaces) the largest member with every attention block
    and dense shared weights. plain_conv has neither: its "supernet" is one fixed member."""
    supernet = space.supernet()
    if not (hasattr(supernet, "arch_parameters") or hasattr(supernet, "set_path")):
        # no weight sharing: the "supernet" must then be exactly the member it decodes to
        shapes = [tuple(p.shape) for p in space.build(space.decode(supernet)).parameters()]
        assert shapes == [tuple(p.shape) for p in supernet.parameters()]
        return
    for seed in range(3):
        net = space.build(space.sample(random.Random(seed)))
        if getattr(space, "takes_clips", False):  # T light networks beside one shared light supernet: per frame
            for light in net.lights:
                assert sum(p.numel() for p in light.net.parameters()) < sum(p.numel() for p in supernet.light.parameters())
            continue
        assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in supernet.parameters())


def test_the_papers_spaces_have_weight_sharing_supernets():
    """So the test above checks them all (it used to skip the ViPNAS spaces as "baseline" spaces)."""
    sharing = {name for name in space_names()
               if any(hasattr(tiny_space(name).supernet(), a) for a in ("arch_parameters", "set_path"))}
    assert {"darts_cells", "vipnas_resnet", "vipnas_mbv3"} <= sharing


def test_samples_differ_with_the_seed(space):
    genotypes = {str(space.sample(random.Random(seed)).genotype) for seed in range(5)}
    assert len(genotypes) > 1


# ---- darts_cells specifics: decoding worked out by hand -----------------------------------------

def test_decode_cell_keeps_the_two_strongest_inputs_and_skips_none():
    prims = ("none", "skip_connect", "conv_3x3")
    # steps=2: node 0 has inputs 0,1 (rows 0-1); node 1 has inputs 0,1,2 (rows 2-4).
    w = torch.tensor([
        [0.9, 0.05, 0.05],   # input 0: 'none' dominates but is excluded -> best usable 0.05
        [0.1, 0.2, 0.7],     # input 1: conv 0.7
        [0.0, 0.6, 0.4],     # node1 <- input 0: skip 0.6
        [0.0, 0.1, 0.2],     # node1 <- input 1: conv 0.2 (weakest, dropped)
        [0.0, 0.3, 0.5],     # node1 <- node 0 (index 2): conv 0.5
    ])
    assert decode_cell(w, prims, steps=2) == [("skip_connect", 0), ("conv_3x3", 1),
                                              ("skip_connect", 0), ("conv_3x3", 2)]


def test_darts_build_has_only_the_chosen_ops():
    space = DartsCellsSpace(**TINY["darts_cells"])
    cells = {k: [["conv_3x3", 0], ["conv_3x3", 1], ["skip_connect", 0], ["conv_3x3", 2]]
             for k in ("normal", "reduce", "fusion")}
    net = space.build(Genotype(space="darts_cells", genotype=cells, space_args={}))
    names = {type(m).__name__ for m in net.modules()}
    assert "MixedOp" not in names and "SepConv" not in names and "DilConv" not in names


@pytest.mark.parametrize("bad, message", [
    ({"normal": [["conv_3x3", 0]]}, "must list 4"),
    ({"normal": [["conv_3x3", 0], ["conv_3x3", 1], ["conv_3x3", 5], ["conv_3x3", 2]]}, "input 5"),
    ({"normal": [["none", 0], ["conv_3x3", 1], ["conv_3x3", 0], ["conv_3x3", 2]]}, "unknown op 'none'"),
])
def test_darts_validate_names_the_bad_edge(bad, message):
    space = DartsCellsSpace(**TINY["darts_cells"])
    good = space.sample(random.Random(0)).genotype
    with pytest.raises(GenotypeError, match=message):
        space.validate(Genotype(space="darts_cells", genotype={**good, **bad}))


def test_darts_genotypes_carry_the_retrain_width():
    space = DartsCellsSpace(**TINY["darts_cells"], retrain_channels=12)
    for genotype in (space.decode(space.supernet()), space.sample(random.Random(0))):
        assert genotype.space_args["init_channels"] == 12
        assert genotype.space_args.get("retrain_channels") is None
    narrow = DartsCellsSpace(**TINY["darts_cells"]).decode(space.supernet())
    assert narrow.space_args["init_channels"] == 4


def test_skip_cap_replaces_the_weakest_skips_by_their_best_other_op():
    from search_spaces.darts_cells import cap_skips
    prims = ("none", "skip_connect", "conv_3x3", "max_pool_3x3")
    w = torch.tensor([
        [0.0, 0.9, 0.04, 0.06],   # node 0 <- input 0: skip 0.9 (strongest skip, kept; else pool)
        [0.0, 0.6, 0.1, 0.3],     # node 0 <- input 1: skip 0.6 (weakest skip -> max_pool 0.3)
        [0.0, 0.7, 0.2, 0.1],     # node 1 <- input 0: skip 0.7 (-> kept with max_skips=2)
        [0.0, 0.1, 0.8, 0.1],     # node 1 <- input 1: conv
        [0.0, 0.2, 0.1, 0.7],     # node 1 <- node 0: pool
    ])
    edges = [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("conv_3x3", 1)]
    assert cap_skips(edges, w, prims, 2) == [("skip_connect", 0), ("max_pool_3x3", 1),
                                             ("skip_connect", 0), ("conv_3x3", 1)]
    assert cap_skips(edges, w, prims, 0) == [("max_pool_3x3", 0), ("max_pool_3x3", 1),
                                             ("conv_3x3", 0), ("conv_3x3", 1)]
    assert cap_skips(edges, w, prims, 3) == edges


def test_pc_darts_shuffles_channels_with_torchs_channel_shuffle():
    import torch.nn.functional as F
    from search_spaces import cells
    assert cells.channel_shuffle is F.channel_shuffle
