"""The HRNet space: the published networks' sizes, a parameter count done by hand, the layout of
HRNet's ImageNet checkpoints, multi-resolution features, and the space's checks.
(The generic space tests are in tests/test_spaces.py and tests/test_genotype.py.)"""
from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from estimators.complexity import count_gflops, count_params
from nas.genotype import Genotype, GenotypeError, load
from nas.spaces import build_space, resolve
from search_spaces.hrnet import HRNetSpace
from tests.helpers import REPO_ROOT

GIB = 1024 ** 3
# Published (params, GFLOPs) at each file's input size: the HRNet paper's COCO val table (W32 / W48 at
# 256x192 and 384x288), its MPII figures for W32 at 256x256, and humanpose.pytorch's README for W18 "v2".
# Their GFLOPs are the pose repo's get_model_summary count: conv (and linear) multiply-adds / 1024**3.
PUBLISHED = {"hrnet_w32_coco_256x192": (28.5e6, 7.1), "hrnet_w32_coco_384x288": (28.5e6, 16.0),
             "hrnet_w48_coco_256x192": (63.6e6, 14.6), "hrnet_w48_coco_384x288": (63.6e6, 32.9),
             "hrnet_w32_mpii_256x256": (28.5e6, 9.5), "hrnet_w18_v2_coco_256x192": (3.7e6, 1.8)}


def _genotype(stages: list[dict], stem: int = 8, stage1: tuple[int, int] = (1, 4)) -> Genotype:
    return Genotype(space="hrnet", genotype={"stem_width": stem, "stage1": {"blocks": stage1[0], "width": stage1[1]},
                                             "stages": stages})


def _hrnet_like(c: int, modules: list[int], blocks: int = 1, **kw) -> Genotype:
    return _genotype([{"modules": m, "blocks": blocks, "widths": [c * 2 ** i for i in range(s + 2)]}
                      for s, m in enumerate(modules)], **kw)


def _conv_macs(net: nn.Module, size: tuple[int, int]) -> int:
    """get_model_summary's rule: weight elements x output pixels of every conv (shapes only: meta device)."""
    total = [0]
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda m, i, o: total.__setitem__(0, total[0] + m.weight.numel() * o.shape[-2]
                                                                      * o.shape[-1]))
    net(torch.empty(1, 3, *size, device="meta"))
    return total[0]


# ---- the published networks --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_network_has_the_published_size(name):
    genotype = load(REPO_ROOT / "genotypes" / f"{name}.json")
    space = resolve(genotype)
    params, gflops = PUBLISHED[name]
    assert genotype.provenance["published"]["params_M"] * 1e6 == params
    assert genotype.provenance["published"]["GFLOPs"] == gflops
    with torch.device("meta"):
        macs = _conv_macs(space.build(genotype), genotype.input_size)
    assert abs(macs / GIB - gflops) / gflops < 0.02  # the published unit
    net = space.build(genotype)
    if name.startswith("hrnet_w18_v2"):
        # README: "3.7M", weight size "15M"; we count 3.757M (+1.6%): the README truncates (3.757M float32
        # weights are 15.0 MB). The FLOPs (1.83 with 4 stage-1 bottlenecks) identify the network; 2 would give 1.43.
        assert 3.7e6 <= count_params(net) < 3.8e6
        assert abs(count_params(net) * 4 / 1e6 - 15) < 0.15
    else:
        assert abs(count_params(net) - params) / params < 0.01
    # The repo's estimator: thop MACs / 1e9 = the published figure x 1024**3 / 1e9, plus thop's BatchNorm
    # count (+0.6% for W48, +1.0% for W32, +1.9% for the thin W18, whose "1.8" also rounds down 1.83).
    tolerance = 0.04 if name.startswith("hrnet_w18_v2") else 0.015
    expected = gflops * GIB / 1e9
    assert 0 <= (count_gflops(net, genotype.input_size) - expected) / expected < tolerance
    keypoints = 16 if "mpii" in name else 17
    h, w = genotype.input_size
    assert genotype.heatmap_size == (h // 4, w // 4)
    with torch.device("meta"):
        assert space.build(genotype)(torch.empty(1, 3, h, w, device="meta")).shape == (1, keypoints, h // 4, w // 4)


def test_parameters_counted_by_hand():
    """stem 2, stage 1 = one bottleneck of width 1 (output 4), one stage of widths [1, 2], K = 1:
    conv1 3*2*9 + bn 4 = 58; conv2 2*2*9 + bn 4 = 40; bottleneck 2*1+2 + 9+2 + 1*4+8 + projection 2*4+8 = 43;
    transition1: 3x3 4->1 (36+2) and stride-2 3x3 4->2 (72+4) = 114; basic blocks 2*(9+2) + 2*(36+4) = 102;
    fusion into branch 0 only: 1x1 2->1 + bn = 4; head 1x1 1->1 with bias = 2. Total 363. With every branch
    fused (multi_scale_output), also branch 0 -> 1: stride-2 3x3 1->2 + bn = 22."""
    genotype = _genotype([{"modules": 1, "blocks": 1, "widths": [1, 2]}], stem=2, stage1=(1, 1))
    assert count_params(HRNetSpace(num_keypoints=1).build(genotype)) == 363
    assert count_params(HRNetSpace(num_keypoints=1, multi_scale_output=True).build(genotype)) == 385


# ---- ImageNet checkpoints (HRNet-Image-Classification) ----------------------------------------------

def test_parameter_names_follow_hrnets_checkpoint_layout():
    """Keys of hrnet_w32-36af842e.pth (cls_hrnet's names, the same as pose_hrnet's), shapes worked out
    from W32: stage-1 output 256, branches 32/64/128/256; stage4's modules 0..2, the last fusing all four."""
    genotype = load(REPO_ROOT / "genotypes" / "hrnet_w32_coco_256x192.json")
    with torch.device("meta"):
        state = HRNetSpace(multi_scale_output=True).build(genotype).state_dict()
    expected = {
        "conv1.weight": (64, 3, 3, 3), "bn2.running_var": (64,), "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.3.conv3.weight": (256, 64, 1, 1), "transition1.0.0.weight": (32, 256, 3, 3),
        "transition1.1.0.0.weight": (64, 256, 3, 3), "transition2.2.0.0.weight": (128, 64, 3, 3),
        "transition3.3.0.1.running_mean": (256,), "stage2.0.branches.1.3.conv2.weight": (64, 64, 3, 3),
        "stage2.0.fuse_layers.0.1.0.weight": (32, 64, 1, 1), "stage2.0.fuse_layers.1.0.0.0.weight": (64, 32, 3, 3),
        "stage3.3.fuse_layers.2.0.0.0.weight": (32, 32, 3, 3),
        "stage3.3.fuse_layers.2.0.1.0.weight": (128, 32, 3, 3), "stage4.2.fuse_layers.0.3.1.weight": (32,),
        "stage4.2.fuse_layers.3.0.2.0.weight": (256, 32, 3, 3), "stage4.2.branches.3.3.bn2.bias": (256,)}
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    identity_slots = ("transition2.0.", "transition3.2.", "stage2.0.fuse_layers.0.0.", "stage4.2.fuse_layers.3.3.")
    assert not any(k.startswith(identity_slots) for k in state)


def _imagenet_file(tmp_path, genotype: Genotype) -> tuple[str, dict[str, torch.Tensor]]:
    """A fake classification checkpoint: the trunk with every branch fused at the end (as cls_hrnet
    builds stage4), random values, plus tensors named like its classification head."""
    trunk = HRNetSpace(multi_scale_output=True).build(genotype).state_dict()
    state = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in trunk.items()
             if not k.startswith("final_layer")}
    state.update({"incre_modules.0.0.conv1.weight": torch.randn(32, 4, 1, 1),
                  "downsamp_modules.0.0.weight": torch.randn(256, 128, 3, 3),
                  "final_layer.0.weight": torch.randn(2048, 1024, 1, 1),
                  "final_layer.1.running_mean": torch.zeros(2048),
                  "classifier.weight": torch.randn(1000, 2048), "classifier.bias": torch.randn(1000)})
    path = tmp_path / "hrnet_tiny_imagenet.pth"
    torch.save(state, path)
    return str(path), state


def test_imagenet_checkpoint_loads_by_name(tmp_path):
    genotype = _hrnet_like(4, [1, 2, 2], stage1=(2, 4))
    path, state = _imagenet_file(tmp_path, genotype)
    net = HRNetSpace().build(genotype)  # the pose network: its last module fuses into branch 0 only
    report = net.load_pretrained(path)
    assert report["missing"] == ["final_layer.weight", "final_layer.bias"]  # the heatmap head
    assert report["mismatched"] == []
    unused = set(report["unused"])
    assert {"classifier.weight", "final_layer.0.weight", "incre_modules.0.0.conv1.weight"} <= unused
    assert {k.split(".")[0] for k in unused} == {"incre_modules", "downsamp_modules", "final_layer", "classifier",
                                                 "stage4"}
    assert all(k.startswith(("stage4.1.fuse_layers.1.", "stage4.1.fuse_layers.2.", "stage4.1.fuse_layers.3."))
               for k in unused if k.startswith("stage4"))
    own = net.state_dict()
    for key in ("conv1.weight", "layer1.1.bn3.running_var", "transition3.3.0.0.weight",
                "stage4.1.fuse_layers.0.3.0.weight", "stage3.1.fuse_layers.2.0.1.0.weight"):
        assert torch.equal(own[key], state[key]), key
    assert net(torch.randn(1, 3, 64, 48)).shape == (1, 17, 16, 12)


def test_a_shorter_stage1_in_the_file_leaves_the_extra_bottlenecks_missing(tmp_path):
    """HRNet-W18-small-v2's ImageNet file has 2 stage-1 bottlenecks, the W18 v2 pose network 4."""
    path, _ = _imagenet_file(tmp_path, _hrnet_like(4, [1, 1, 1], stage1=(2, 4)))
    report = HRNetSpace().build(_hrnet_like(4, [1, 1, 1], stage1=(4, 4))).load_pretrained(path)
    assert {k.split(".")[1] for k in report["missing"] if k.startswith("layer1")} == {"2", "3"}
    assert "layer1.1.conv2.weight" in report["loaded"]


# ---- features: multi-resolution outputs ----------------------------------------------------------

def test_features_of_a_two_stage_network_are_its_branches():
    x = torch.randn(2, 3, 128, 96)
    multi = HRNetSpace(multi_scale_output=True)
    hrnet = multi.build(_hrnet_like(4, [1, 1]))  # HRNet's stages 2 and 3: 3 branches
    assert [tuple(f.shape) for f in hrnet.features(x)] == [(2, 4, 32, 24), (2, 8, 16, 12), (2, 16, 8, 6)]
    # stage 3 may add two branches at once: the four maps at 1/4, 1/8, 1/16, 1/32
    wider = multi.build(_genotype([{"modules": 1, "blocks": 1, "widths": [4, 8]},
                                   {"modules": 2, "blocks": [1, 2, 1, 1], "widths": [4, 8, 16, 32]}]))
    assert [tuple(f.shape) for f in wider.features(x)] == [(2, 4, 32, 24), (2, 8, 16, 12), (2, 16, 8, 6),
                                                           (2, 32, 4, 3)]
    assert wider(x).shape == (2, 17, 32, 24)
    # the pose network fuses the last module into the highest-resolution branch only
    assert [tuple(f.shape) for f in HRNetSpace().build(_hrnet_like(4, [1, 1])).features(x)] == [(2, 4, 32, 24)]


def test_sizes_not_divisible_by_the_lowest_resolution_still_fuse():
    net = build_space("hrnet", {}).supernet()  # 4 branches: 1/4 ... 1/32
    assert net(torch.randn(1, 3, 60, 44)).shape == (1, 17, 15, 11)
    assert net(torch.randn(1, 3, 96, 72)).shape == (1, 17, 24, 18)


def test_widths_changed_between_stages_go_through_the_transition():
    genotype = _genotype([{"modules": 1, "blocks": 1, "widths": [4, 8]},
                          {"modules": 1, "blocks": 1, "widths": [6, 8, 12]}])
    net = HRNetSpace().build(genotype)
    assert tuple(net.transition2[0][0].weight.shape) == (6, 4, 3, 3)
    assert isinstance(net.transition2[1], nn.Identity)
    assert net(torch.randn(1, 3, 64, 48)).shape == (1, 17, 16, 12)


# ---- the space ---------------------------------------------------------------------------------

def test_yaml_default_builds_its_largest_member():
    space = build_space("hrnet", {})
    largest = space.decode(space.supernet()).genotype
    assert largest["stem_width"] == 16 and largest["stage1"] == {"blocks": 1, "width": 8}
    assert [s["widths"] for s in largest["stages"]] == [[8, 16], [8, 16, 32], [8, 16, 32, 64]]
    assert space.supernet()(torch.randn(2, 3, 96, 72)).shape == (2, 17, 24, 18)


def test_samples_are_members_from_the_choice_lists():
    space = build_space("hrnet", {"base_width_choices": [4, 6], "module_choices": [[1], [1, 2], [1, 2]],
                                  "block_choices": [1, 2]})
    seen = set()
    for seed in range(6):
        genotype = space.sample(random.Random(seed))
        space.validate(genotype)
        g = genotype.genotype
        base = g["stages"][0]["widths"][0]
        assert base in (4, 6)
        for s, stage in enumerate(g["stages"]):
            assert stage["widths"] == [base * 2 ** i for i in range(s + 2)]
            assert stage["modules"] in ((1,), (1, 2), (1, 2))[s] and set(stage["blocks"]) <= {1, 2}
        seen.add(len(g["stages"]))
        assert space.build(genotype)(torch.randn(1, 3, 64, 48)).shape == (1, 17, 16, 12)
    assert len(seen) > 1


def test_full_size_space_samples_validate():
    space = resolve(load(REPO_ROOT / "genotypes" / "hrnet_w32_coco_256x192.json"))
    for seed in range(5):
        genotype = space.sample(random.Random(seed))
        space.validate(genotype)
        assert genotype.genotype["stages"][0]["widths"][0] in (18, 32, 48)
        assert [len(s["widths"]) for s in genotype.genotype["stages"]] == [2, 3, 4]


def _edited(edit) -> Genotype:
    genotype = copy.deepcopy(_hrnet_like(4, [1, 1, 1]))
    edit(genotype.genotype)
    return genotype


BAD = [
    (lambda g: g.update(stem_width="64"), "genotype.stem_width"),
    (lambda g: g.update(stem_width=True), "genotype.stem_width"),
    (lambda g: g.update(stem_width=0), "genotype.stem_width"),
    (lambda g: g.pop("stage1"), "field 'genotype': must be an object with keys"),
    (lambda g: g["stage1"].pop("width"), "genotype.stage1"),
    (lambda g: g["stage1"].update(blocks=17), "genotype.stage1.blocks"),
    (lambda g: g.update(stages=[]), "genotype.stages"),
    (lambda g: g.update(stages="x"), "genotype.stages"),
    (lambda g: g["stages"].append(copy.deepcopy(g["stages"][-1])), "genotype.stages"),
    (lambda g: g["stages"][1].pop("modules"), "genotype.stages[1]"),
    (lambda g: g["stages"][1].update(modules=0), "genotype.stages[1].modules"),
    (lambda g: g["stages"][1].update(modules=2.0), "genotype.stages[1].modules"),
    (lambda g: g["stages"][2]["widths"].__setitem__(3, 5000), "genotype.stages[2].widths[3]"),
    (lambda g: g["stages"][1].update(widths=[4, 8]), "genotype.stages[1].widths"),
    (lambda g: g["stages"][0].update(widths=[4, 8, 16, 32, 64]), "genotype.stages[0].widths"),
    (lambda g: g["stages"][1].update(blocks=[1, 1]), "genotype.stages[1].blocks"),
    (lambda g: g["stages"][1].update(blocks=[1, 0, 1]), "genotype.stages[1].blocks[1]"),
    (lambda g: g["stages"][1].update(blocks="2"), "genotype.stages[1].blocks"),
]


@pytest.mark.parametrize("edit, field", BAD)
def test_validate_names_the_bad_field(edit, field):
    with pytest.raises(GenotypeError, match=field.replace("[", r"\[").replace("]", r"\]")):
        HRNetSpace().validate(_edited(edit))


@pytest.mark.parametrize("args, field", [
    ({"base_width_choices": [10_000]}, "space_args.base_width_choices[0]"),
    ({"module_choices": [[1], [1], [100]]}, "space_args.module_choices[2][0]"),
    ({"stem_width_choices": [64, 1e6]}, "space_args.stem_width_choices[1]"),
    ({"num_stages_choices": [4]}, "space_args.num_stages_choices[0]"),
    ({"num_keypoints": 0}, "space_args.num_keypoints"),
    ({"module_choices": [[1], [1]]}, "module_choices lists 2 stages"),
    ({"multi_scale_output": "yes"}, "multi_scale_output must be true or false"),
])
def test_oversized_or_malformed_space_args_are_refused(args, field):
    with pytest.raises(GenotypeError, match=field.replace("[", r"\[").replace("]", r"\]")):
        build_space("hrnet", args)
