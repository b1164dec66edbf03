"""The MSPN space: the published networks' sizes (MMPose's MSPN table and a hand count), the multi-output
contract (stages x 4 heatmap sets and their supervision), validation, bounds, sampling, ImageNet loading."""
from __future__ import annotations

import random

import pytest
import torch
import torchvision

from estimators.complexity import count_gflops, count_params
from nas.genotype import Genotype, GenotypeError, load
from nas.spaces import build_space, resolve
from tests.helpers import REPO_ROOT

# MMPose's MSPN model zoo (COCO val2017, 256x192, 17 keypoints): stages -> (params M, GFLOPs)
PUBLISHED = {1: (25.11, 5.11), 2: (56.80, 11.35), 3: (88.49, 17.59), 4: (120.18, 23.82)}

TINY = dict(base_width=4, stage_choices=[1, 2, 3], depth_choices=[[1], [1], [1, 2], [1]],
            unit_channel_choices=[8], num_keypoints=5)


def _file(stages: int):
    return REPO_ROOT / "genotypes" / f"mspn_{stages}stage_coco_256x192.json"


def _tiny(genotype: dict, **args) -> Genotype:
    return Genotype(space="mspn", genotype=genotype, space_args={**TINY, **args})


# ---- the published networks ------------------------------------------------------------------------

@pytest.mark.parametrize("stages", sorted(PUBLISHED))
def test_published_network_has_the_published_size(stages):
    genotype = load(_file(stages))
    assert genotype.genotype == {"stages": stages, "depths": [3, 4, 6, 3], "unit_channels": 256}
    assert genotype.provenance["published"]["params_M"] == PUBLISHED[stages][0]
    net = resolve(genotype).build(genotype)
    params_m, gflops = PUBLISHED[stages]
    assert abs(count_params(net) / 1e6 - params_m) < 0.005  # the table's rounding
    # thop counts 4 ops per BatchNorm output, MMPose's counter 2 per BatchNorm and 1 per ReLU: +0.3-0.4%
    assert abs(count_gflops(net, tuple(genotype.input_size)) - gflops) / gflops < 0.01


def test_parameter_count_by_hand():
    """Stage 1 = ResNet-50 without its classifier (torchvision's count) + the up path; every further stage
    = ResNet-50 without stem or classifier + the up path + the previous stage's skips and cross conv.
    Convs without bias, BN 2 parameters per channel, K = 17, widths C = 256/512/1024/2048, U = 256."""
    resnet = torchvision.models.resnet50(weights=None)
    body = count_params(resnet) - count_params(resnet.fc)  # 23,508,032
    widths, unit, k = (256, 512, 1024, 2048), 256, 17
    up_path = (sum(c * unit + 2 * unit for c in widths)  # laterals
               + 3 * (unit * unit + 2 * unit)  # from unit 2: 1x1 conv of the upsampled previous unit
               + 4 * (unit * unit + 2 * unit + 9 * unit * k + 2 * k))  # each unit's heatmap predictor
    skips = sum(c * c + 2 * c + unit * c + 2 * c for c in widths) + unit * 64 + 2 * 64
    stem = 7 * 7 * 3 * 64 + 2 * 64
    first, later = body + up_path, body - stem + up_path + skips
    assert (first, later) == (25_112_264, 31_688_200)
    for stages in (1, 2):
        genotype = load(_file(stages))
        assert count_params(resolve(genotype).build(genotype)) == first + (stages - 1) * later


# ---- the output contract -----------------------------------------------------------------------------

def test_forward_gives_four_heatmap_sets_per_stage_at_quarter_resolution():
    net = build_space("mspn", TINY).build(_tiny({"stages": 3, "depths": [1, 1, 2, 1], "unit_channels": 8}))
    out = net(torch.randn(2, 3, 64, 48))
    assert isinstance(out, list) and len(out) == 12
    assert all(o.shape == (2, 5, 16, 12) for o in out)


def test_the_last_output_is_the_last_stages_finest_unit():
    net = build_space("mspn", TINY).build(_tiny({"stages": 2, "depths": [1, 1, 1, 1], "unit_channels": 8})).eval()
    x = torch.randn(1, 3, 64, 48)
    seen = []
    net.stages[1].units[3].predict.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        out = net(x)
    assert seen[0].shape == (1, 5, 16, 12) and torch.equal(out[-1], seen[0])  # 1/4 already: not resized


def test_heatmap_outputs_follow_mspns_coarse_to_fine_supervision():
    """Kernels 15/11/9/7 (units 1-4) in non-final stages, 11/9/7/5 in the last (MMPose's level_indices into
    kernel_sizes [15, 11, 9, 7, 5]); OpenCV's sigma for a kernel k: 0.3 * ((k - 1) / 2 - 1) + 0.8, so
    15 -> 2.6, 11 -> 2.0, 9 -> 1.7, 7 -> 1.4, 5 -> 1.1. Loss weights 0.25 x 3 then 1 (MMPose's
    KeypointMSELoss(loss_weight=0.25) x 3 + KeypointOHKMMSELoss(loss_weight=1) per stage, topk 8)."""
    inner, last = [2.6, 2.0, 1.7, 1.4], [2.0, 1.7, 1.4, 1.1]
    space = build_space("mspn", TINY)
    for stages, sigmas in ((1, last), (3, inner + inner + last)):
        net = space.build(_tiny({"stages": stages, "depths": [1, 1, 1, 1], "unit_channels": 8}))
        outputs = net.heatmap_outputs()
        assert len(outputs) == len(net(torch.randn(2, 3, 32, 32))) == 4 * stages
        assert [o.sigma for o in outputs] == pytest.approx(sigmas)
        assert [o.weight for o in outputs] == [0.25, 0.25, 0.25, 1.0] * stages
        assert [o.ohkm_topk for o in outputs] == [None, None, None, 8] * stages


# ---- validation, bounds, sampling ----------------------------------------------------------------------

@pytest.mark.parametrize("genotype, field", [
    ([2, [1, 1, 1, 1], 8], "'genotype'"),
    ({"stages": 2, "depths": [1, 1, 1, 1]}, "'genotype'"),  # missing key
    ({"stages": 2, "depths": [1, 1, 1, 1], "unit_channels": 8, "width": 3}, "'genotype'"),  # unknown key
    ({"stages": 4, "depths": [1, 1, 1, 1], "unit_channels": 8}, "'genotype.stages'"),  # not a choice
    ({"stages": True, "depths": [1, 1, 1, 1], "unit_channels": 8}, "'genotype.stages'"),  # a bool is not 1
    ({"stages": "2", "depths": [1, 1, 1, 1], "unit_channels": 8}, "'genotype.stages'"),
    ({"stages": 2, "depths": [1, 1, 1], "unit_channels": 8}, "'genotype.depths'"),  # one per ResNet layer
    ({"stages": 2, "depths": 1, "unit_channels": 8}, "'genotype.depths'"),
    ({"stages": 2, "depths": [1, 1, 3, 1], "unit_channels": 8}, r"'genotype.depths\[2\]'"),
    ({"stages": 2, "depths": [1, 1, 1.0, 1], "unit_channels": 8}, r"'genotype.depths\[2\]'"),
    ({"stages": 2, "depths": [1, 1, 1, 1], "unit_channels": 8.0}, "'genotype.unit_channels'"),
])
def test_validate_names_the_bad_field(genotype, field):
    with pytest.raises(GenotypeError, match=f"field {field}"):
        build_space("mspn", TINY).validate(_tiny(genotype))


@pytest.mark.parametrize("args, field", [
    ({"base_width": 10 ** 6}, "space_args.base_width"),
    ({"base_width": 0}, "space_args.base_width"),
    ({"stage_choices": [1, 100]}, r"space_args.stage_choices\[1\]"),
    ({"depth_choices": [[1], [1], [1000], [1]]}, r"space_args.depth_choices\[2\]\[0\]"),
    ({"unit_channel_choices": [10 ** 7]}, r"space_args.unit_channel_choices\[0\]"),
    ({"num_keypoints": 1.5}, "space_args.num_keypoints"),
    ({"depth_choices": [[1], [1], [1]]}, "space_args.*4 lists"),  # one list per ResNet layer
])
def test_oversized_or_malformed_space_args_are_refused(args, field):
    with pytest.raises(GenotypeError, match=field):
        build_space("mspn", {**TINY, **args})


def test_samples_are_members_that_build_and_cover_the_choices():
    space = build_space("mspn", TINY)
    samples = [space.sample(random.Random(seed)) for seed in range(20)]
    for genotype in samples:
        space.validate(genotype)
        assert genotype.space == "mspn" and genotype.space_args == space.args
    assert {g.genotype["stages"] for g in samples} == {1, 2, 3}
    assert {g.genotype["depths"][2] for g in samples} == {1, 2}
    net = space.build(samples[0])
    assert len(net(torch.randn(2, 3, 32, 32))) == 4 * samples[0].genotype["stages"]


def test_the_yaml_default_builds_its_largest_member_cheaply():
    space = build_space("mspn", {})
    genotype = space.decode(space.supernet())
    space.validate(genotype)
    assert genotype.genotype == {"stages": 2, "depths": [1, 1, 2, 1], "unit_channels": 16}
    net = space.build(genotype)
    assert count_params(net) < 1e6  # CPU-sized: the default retrain runs on a 2-core CPU
    out = net(torch.randn(2, 3, 96, 72))
    assert len(out) == 8 and out[-1].shape == (2, 17, 24, 18)


# ---- ImageNet initialisation -----------------------------------------------------------------------------

def test_load_pretrained_puts_a_torchvision_resnet50_into_every_stages_down_path(tmp_path):
    resnet = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(resnet.state_dict(), path)
    net = build_space("mspn", dict(base_width=64, stage_choices=[2], depth_choices=[[3], [4], [6], [3]],
                                   unit_channel_choices=[32])).build(
        Genotype(space="mspn", genotype={"stages": 2, "depths": [3, 4, 6, 3], "unit_channels": 32}))
    report = net.load_pretrained(str(path))
    assert report["missing"] == [] and report["mismatched"] == []
    assert report["unused"] == ["fc.bias", "fc.weight"]
    own, theirs = net.state_dict(), resnet.state_dict()
    n_stem = sum(1 for k in theirs if k.startswith(("conv1.", "bn1.")))
    n_layers = sum(1 for k in theirs if k.startswith("layer"))
    assert len(report["loaded"]) == n_stem + 2 * n_layers
    for key in ("conv1.weight", "layer1.0.downsample.0.weight", "layer3.5.bn2.running_var", "layer4.2.conv3.weight"):
        assert torch.equal(own[f"stages.0.down.{key}"], theirs[key])
    assert torch.equal(own["stages.1.down.layer2.0.conv2.weight"], theirs["layer2.0.conv2.weight"])
    assert not any(k.startswith("stages.1.down.conv1") for k in own)  # later stages have no stem


def test_heatmap_bn_init_sets_the_scale_of_every_units_last_batchnorm():
    """heatmap_bn_init=0: each unit's heatmap BN starts at scale 0 (first heatmaps = its shift, 0); the
    published files keep MSPN's 1; a value outside [0, 1] is refused."""
    space = build_space("mspn", {"heatmap_bn_init": 0.0})
    net = space.build(space.sample(random.Random(0)))
    scales = [unit.predict[-1][1].weight for stage in net.stages for unit in stage.units]
    assert scales and all(torch.count_nonzero(s) == 0 for s in scales)
    assert float(net(torch.randn(2, 3, 64, 48))[-1].abs().max()) == 0.0
    published = load(REPO_ROOT / "genotypes" / "mspn_1stage_coco_256x192.json")
    assert published.space_args["heatmap_bn_init"] == 1.0
    with pytest.raises(GenotypeError, match="heatmap_bn_init"):
        build_space("mspn", {"heatmap_bn_init": 2.0})
