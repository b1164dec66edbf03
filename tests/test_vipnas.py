"""The ViPNAS spaces: the published networks' sizes, weight sharing worked out by hand, and the
supernet <-> standalone equivalence. (The generic space tests are in tests/test_spaces.py.)"""
from __future__ import annotations

import json
import random
import subprocess

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from estimators.complexity import count_gflops, count_params
from nas.genotype import Genotype, GenotypeError, load, save
from nas.spaces import build_space, resolve
from search_spaces.elastic import ElasticConv2d, ElasticConvTranspose2d
from tests.helpers import REPO_ROOT, TINY_DATA, module_cmd, run_env

# Published sizes with 17 keypoints at 256x192 (ViPNAS, CVPR 2021, Table of COCO results; the same
# figures are on MMPose's model zoo page for these two configs).
PUBLISHED = {"s_vipnas_res50": (7.29e6, 1.49), "s_vipnas_mbv3": (5.9e6, 0.76)}
SPACES = ("vipnas_resnet", "vipnas_mbv3")


def _genotype_path(name: str):
    return REPO_ROOT / "genotypes" / f"{name}.json"


def test_transposed_conv_macs_are_counted_per_input_pixel():
    """A transposed conv spreads every input pixel over k*k outputs of each of its group's output
    channels: MACs = input elements x C_out/g x k*k (thop 0.1.1 alone counts 4x that at stride 2)."""
    net = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.ConvTranspose2d(8, 6, 4, 2, 1, groups=2, bias=False))
    assert count_gflops(net, (5, 7)) * 1e9 == 5 * 7 * 3 * 8 + (5 * 7 * 8) * (6 // 2) * 4 * 4


# ---- the published networks --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_network_has_the_published_size(name):
    genotype = load(_genotype_path(name))
    net = resolve(genotype).build(genotype)
    params, gflops = PUBLISHED[name]
    assert abs(count_params(net) - params) / params < 0.03, count_params(net)
    assert abs(count_gflops(net, (256, 192)) - gflops) / gflops < 0.03
    assert net(torch.zeros(1, 3, 256, 192)).shape == (1, 17, 64, 48)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_genotype_round_trips(name, tmp_path):
    genotype = load(_genotype_path(name))
    again = load(save(genotype, tmp_path / "g.json"))
    assert again.to_dict() == genotype.to_dict()
    shapes = [{k: v.shape for k, v in resolve(g).build(g).state_dict().items()} for g in (genotype, again)]
    assert shapes[0] == shapes[1]


@pytest.mark.slow
def test_retrain_accepts_the_published_mbv3_file(tmp_path):
    # stride 32: a 64x64 crop gives 2x2 features and 16x16 heatmaps after the head's three x2 deconvs
    args = [*TINY_DATA, "input_size=[64,64]", "heatmap_size=[16,16]", "epochs=1", "max_steps_per_epoch=1",
            "batch_size=2", "eval_batch_size=4", f"run_dir={tmp_path / 'r'}"]
    proc = subprocess.run(module_cmd("nas.retrain", "genotypes/s_vipnas_mbv3.json", *args), capture_output=True,
                          text=True, timeout=300, env=run_env(tmp_path), cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert abs(results["params"] - 5.9e6) / 5.9e6 < 0.03


# ---- weight sharing, checked against hand-built convs ---------------------------------------------

def test_a_3x3_path_uses_the_centre_of_the_7x7_weight():
    conv = ElasticConv2d(2, 3, 7)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(conv.weight.numel(), dtype=torch.float32).view_as(conv.weight))
    # rows/cols 2..4 of 0..6 are the centre; entry [o, i, r, c] = ((o*2 + i)*7 + r)*7 + c
    expected = torch.tensor([[[[((o * 2 + i) * 7 + r) * 7 + c for c in (2, 3, 4)] for r in (2, 3, 4)]
                              for i in range(2)] for o in range(3)], dtype=torch.float32)
    assert torch.equal(conv.weight_for(2, 3, 3), expected)
    x = torch.randn(1, 2, 6, 5)
    assert torch.allclose(conv(x, 3, 3), F.conv2d(x, expected, padding=1))


def test_a_narrower_path_equals_a_hand_built_conv_with_the_sliced_weights():
    conv = ElasticConv2d(8, 6, 5, bias=True)
    x = torch.randn(2, 5, 7, 7)  # 5 of the 8 input channels
    plain = nn.Conv2d(5, 4, 3, padding=1)
    with torch.no_grad():
        plain.weight.copy_(conv.weight[:4, :5, 1:4, 1:4])
        plain.bias.copy_(conv.bias[:4])
    assert torch.allclose(conv(x, 4, 3), plain(x), atol=1e-6)


def test_groups_take_the_block_diagonal_of_the_dense_weight():
    conv = ElasticConv2d(4, 4, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(16.0).view(4, 4, 1, 1))  # W[r, c] = 4r + c
    # two groups: rows 0,1 keep columns 0,1; rows 2,3 keep columns 2,3
    assert conv.weight_for(4, 4, 1, groups=2).flatten().tolist() == [0, 1, 4, 5, 10, 11, 14, 15]
    x = torch.randn(1, 4, 3, 3)
    mask = torch.block_diag(torch.ones(2, 2), torch.ones(2, 2)).view(4, 4, 1, 1)
    assert torch.allclose(conv(x, 4, 1, groups=2), F.conv2d(x, conv.weight * mask), atol=1e-6)


def test_group_deconv_is_the_dense_deconv_without_the_cross_group_weights():
    deconv = ElasticConvTranspose2d(6, 8)
    x = torch.randn(1, 4, 3, 2)  # 4 input channels, 4 output channels, 2 groups
    mask = torch.block_diag(torch.ones(2, 2), torch.ones(2, 2)).view(4, 4, 1, 1)
    dense = deconv.weight[:4, :4] * mask
    expected = F.conv_transpose2d(x, dense, stride=2, padding=1)
    assert torch.allclose(deconv(x, 4, groups=2), expected, atol=1e-6)
    assert deconv(x, 4, groups=2).shape == (1, 4, 6, 4)


# ---- the supernet and the standalone networks ---------------------------------------------------

def _scramble(net: nn.Module, seed: int) -> None:
    """Weights and BN statistics far from their init, so that a wrong slice would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.rand(tensor.shape, generator=gen)
                tensor.copy_(0.5 + noise if name.endswith("running_var") else 0.3 * (noise - 0.5))


@pytest.mark.parametrize("name", SPACES)
def test_build_with_the_supernet_gives_the_supernet_output(name):
    space = build_space(name, {})
    supernet = space.supernet()
    _scramble(supernet, 0)
    supernet.eval()
    x = torch.randn(2, 3, 64, 48)
    outputs = []
    for seed in range(4):
        genotype = space.sample(random.Random(seed))
        supernet.set_path(genotype)
        expected = supernet(x)
        net = space.build(genotype, supernet).eval()
        assert not any(type(m).__name__.startswith("Elastic") for m in net.modules())
        assert torch.allclose(net(x), expected, atol=1e-5, rtol=1e-4)
        outputs.append(expected)
    assert not torch.allclose(outputs[0], outputs[1])  # different members, different networks


@pytest.mark.parametrize("name", SPACES)
def test_no_path_runs_the_largest_member(name):
    space = build_space(name, {})
    supernet = space.supernet()
    _scramble(supernet, 1)
    supernet.eval().set_path(None)
    largest = space.decode(supernet)
    space.validate(largest)
    x = torch.randn(1, 3, 64, 48)
    assert torch.allclose(space.build(largest, supernet).eval()(x), supernet(x), atol=1e-5, rtol=1e-4)
    # from conf/search_space/<name>.yaml: the largest choice of each list, the fewest groups, the last attention
    widths, depths = {"vipnas_resnet": ([16, 24, 32], [2, 2, 2]), "vipnas_mbv3": ([8, 16, 24], [1, 2, 2])}[name]
    stages = largest.genotype["stages"]
    assert [s["width"] for s in stages] == widths and [s["depth"] for s in stages] == depths
    assert all(s["kernel"] == 7 and s["attention"] == "gc" for s in stages)
    assert [s["groups"] for s in stages] == ([1, 1, 1] if name == "vipnas_resnet" else [2, 2, 2])
    assert largest.genotype["head"] == {"deconv_channels": [32], "deconv_groups": [1]}


def test_a_path_trains_only_its_part_of_the_shared_weights():
    space = build_space("vipnas_resnet", {})
    supernet = space.supernet()
    genotype = space.sample(random.Random(3))
    genotype.genotype["stem"]["kernel"] = 3
    supernet.set_path(genotype)
    supernet(torch.randn(2, 3, 32, 32)).sum().backward()
    grad = supernet.stem.conv.weight.grad  # (16, 3, 7, 7) shared; the path uses its 3x3 centre
    assert grad[:, :, 2:5, 2:5].abs().sum() > 0
    grad[:, :, 2:5, 2:5] = 0
    assert grad.abs().sum() == 0


@pytest.mark.parametrize("where, value, message", [
    (("stages", 2, "kernel"), 9, "field 'genotype.stages[2].kernel': 9 is not one of [3, 5, 7]"),
    (("stages", 0, "attention"), "cbam", "field 'genotype.stages[0].attention': 'cbam' is not one of"),
    (("stages", 1, "width"), 20, "field 'genotype.stages[1].width': 20 is not one of [16, 24]"),
    (("stages", 1, "depth"), True, "field 'genotype.stages[1].depth'"),
    (("head", "deconv_channels"), [16, 16], "field 'genotype.head.deconv_channels' must list 1"),
    (("stem", "width"), 12, "field 'genotype.stem.width'"),
])
def test_validate_names_the_bad_field(where, value, message):
    space = build_space("vipnas_resnet", {})
    genotype = space.sample(random.Random(0))
    node = genotype.genotype
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(GenotypeError) as err:
        space.validate(genotype)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_validate_rejects_groups_that_do_not_divide_the_channels():
    space = build_space("vipnas_mbv3", {"group_choices": [1, 3, 8]})
    stage = {"depth": 1, "width": 8, "expansion": 1, "kernel": 3, "groups": 3, "attention": "none"}
    genotype = space.sample(random.Random(0))
    genotype.genotype["stages"][0] = stage
    with pytest.raises(GenotypeError, match=r"genotype.stages\[0\].groups': 3 does not divide the 8"):
        space.validate(genotype)
    with pytest.raises(GenotypeError, match="genotype.stages' must list 3"):
        space.validate(Genotype(space="vipnas_mbv3", genotype={**genotype.genotype, "stages": []}))


@pytest.mark.parametrize("name", SPACES)
def test_smallest_and_largest_bound_every_sampled_member(name):
    """Params grow with depth, width, kernel and expansion and shrink with groups. (Attention is
    left out of the upper bound: an SE block can outweigh a GC block on wide layers.)"""
    from estimators.complexity import count_params as params
    space = build_space(name, {"attention_choices": ["none"]})
    def size(path):
        return params(space.build(Genotype(space=name, genotype=path, space_args=space.args)))
    rng = random.Random(0)
    for _ in range(10):
        assert size(space.smallest()) <= params(space.build(space.sample(rng))) <= size(space.largest())


# ---- the library's blocks and the shared machinery -----------------------------------------------

@pytest.mark.parametrize("name, gate", [("vipnas_resnet", nn.Sigmoid), ("vipnas_mbv3", nn.Hardsigmoid)])
def test_se_blocks_are_torchvisions_with_the_familys_gate(name, gate):
    """SE is torchvision.ops.SqueezeExcitation: x * gate(fc2(relu(fc1(mean(x))))), squeezing C to C/4;
    the ResNet family gates with a sigmoid, MobileNetV3 with a hard sigmoid (as MobileNetV3 does)."""
    from torchvision.ops import SqueezeExcitation
    space = build_space(name, {"attention_choices": ["se"]})
    member = space.sample(random.Random(0))
    blocks = [m for m in space.build(member).modules() if isinstance(m, SqueezeExcitation)]
    assert len(blocks) == sum(s["depth"] for s in member.genotype["stages"])  # one per block
    se = blocks[0]
    assert isinstance(se.scale_activation, gate) and se.fc1.out_channels == se.fc1.in_channels // 4
    _scramble(se, 2)
    x = torch.randn(2, se.fc1.in_channels, 5, 4)
    squeeze = F.relu(F.conv2d(x.mean(dim=(2, 3), keepdim=True), se.fc1.weight, se.fc1.bias))
    expected = x * gate()(F.conv2d(squeeze, se.fc2.weight, se.fc2.bias))
    assert torch.allclose(se(x), expected, atol=1e-6)


def test_both_families_share_one_base_not_each_other():
    from search_spaces.vipnas_base import ViPNASSpace
    from search_spaces.vipnas_mbv3 import ViPNASMobileNetV3Space
    from search_spaces.vipnas_resnet import ViPNASResNetSpace
    assert issubclass(ViPNASMobileNetV3Space, ViPNASSpace) and issubclass(ViPNASResNetSpace, ViPNASSpace)
    assert not issubclass(ViPNASMobileNetV3Space, ViPNASResNetSpace)


def test_one_head_initialisation_helper():
    """The std-0.001 head start is written once (nas.pose.head.init_head), and every head uses it."""
    sources = [*(REPO_ROOT / "nas").rglob("*.py"), *(REPO_ROOT / "search_spaces").rglob("*.py")]
    writers = [p.relative_to(REPO_ROOT).as_posix() for p in sources if "std=0.001" in p.read_text()]
    assert writers == ["nas/pose/head.py"], writers
    from nas.pose.head import HeatmapHead
    from nas.pose.vipnas_head import ViPNASHead
    from search_spaces.elastic import ElasticViPNASHead
    torch.manual_seed(0)
    for head in (HeatmapHead(64, 17, 1, 64), ViPNASHead(64, [64], [1], 17), ElasticViPNASHead(64, 64, 1, 17)):
        weight = head.deconv[0].weight
        assert 0.0005 < float(weight.std()) < 0.002 and float(head.final.bias.abs().sum()) == 0.0
