"""The temporal space's network (ViPNAS temporal level): online step = clip forward, fusion that starts as
the identity, the key/light schedule, detached propagation, warped heatmaps, and the genotype checks."""
from __future__ import annotations

import copy
import random

import pytest
import torch

from nas.genotype import Genotype, GenotypeError, load, save
from search_spaces.temporal import FUSION_OPS, FusedLightNet, HeatmapFusion, TemporalSpace


@pytest.fixture(scope="module")
def space():
    return TemporalSpace(cycle_choices=[2], fusion_op_choices=list(FUSION_OPS))


def _member(space, seed=0, **frame):
    genotype = space.sample(random.Random(seed))
    for f in genotype.genotype["frames"]:
        f.update(frame)
    return genotype


def _translations(batch: int, length: int, shift: float = 4.0) -> torch.Tensor:
    """Crops that move `shift` input pixels right per frame: image -> input affines (x' = x - t * shift)."""
    a = torch.zeros(batch, length, 2, 3)
    a[..., 0, 0] = a[..., 1, 1] = 1.0
    a[..., 0, 2] = -shift * torch.arange(length, dtype=torch.float32)
    return a


def _perturb_fusions(net) -> None:
    """Fusion convs start at zero (a no-op); give them weights so the tests see the heatmaps used."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for light in net.lights:
            light.fusion.proj.weight.add_(0.1 * torch.randn(light.fusion.proj.weight.shape, generator=g))


@pytest.mark.parametrize("warp", [False, True])
def test_online_step_gives_the_clip_forward(space, warp):
    net = space.build(_member(space)).eval()
    _perturb_fusions(net)
    x = torch.randn(2, 5, 3, 96, 72)
    affines = _translations(2, 5) if warp else None
    with torch.no_grad():
        clip = net(x, affines)
        net.reset()
        online = torch.stack([net.step(x[:, t], None if affines is None else affines[:, t]) for t in range(5)], 1)
    assert clip.shape == (2, 5, 17, 24, 18)
    assert torch.allclose(clip, online, atol=1e-6)


def test_key_frames_every_cycle_plus_one_and_they_ignore_the_past(space):
    """T = 2: frames 0 and 3 are key frames; a key frame's heatmaps are the key network's on that frame alone."""
    net = space.build(_member(space)).eval()
    assert [net.frame_net(t) for t in range(7)] == ["key", "light0", "light1", "key", "light0", "light1", "key"]
    x = torch.randn(1, 4, 3, 96, 72)
    with torch.no_grad():
        out = net(x)
        assert torch.allclose(out[:, 3], net.key(x[:, 3]), atol=1e-6)
        y = x.clone()
        y[:, :3] = torch.randn(1, 3, 3, 96, 72)  # other earlier frames: the key frame is unchanged
        assert torch.allclose(net(y)[:, 3], out[:, 3], atol=1e-6)


@pytest.mark.parametrize("op", FUSION_OPS)
def test_a_fused_light_network_starts_as_the_one_without_fusion(space, op):
    """Zero projection (add, mul) or the identity on the features (cat): at initialisation the heatmaps do not
    change the output; after one gradient step on the fusion they do."""
    genotype = _member(space, fusion_op=op, fusion_stage=1)
    net = space.build(genotype).eval()
    light = net.lights[0]
    image, heat = torch.randn(2, 3, 96, 72), torch.rand(2, 17, 24, 18)
    assert torch.allclose(light(image, heat), light(image, None), atol=1e-6)
    light(image, heat).square().mean().backward()
    assert light.fusion.proj.weight.grad.abs().sum() > 0


def test_fusion_ops_by_hand():
    """1 channel, 1 keypoint, projection weight 2 and bias 0.5: add x + 2h + 0.5; mul x (1 + 2h + 0.5);
    cat with Q = [w_x, w_h] = [1, 3] and bias 0: x + 3h."""
    x, h = torch.tensor([[[[1.0, -2.0]]]]), torch.tensor([[[[0.5, 1.0]]]])
    expected = {"add": x + 2 * h + 0.5, "mul": x * (1 + 2 * h + 0.5), "cat": x + 3 * h}
    for op in FUSION_OPS:
        fusion = HeatmapFusion(op, 1, 1)
        with torch.no_grad():
            if op == "cat":
                fusion.proj.weight.copy_(torch.tensor([1.0, 3.0]).view(1, 2, 1, 1))
            else:
                fusion.proj.weight.fill_(2.0)
                fusion.proj.bias.fill_(0.5)
        assert torch.allclose(fusion(x, h), expected[op]), op


def test_the_fused_map_is_the_chosen_stage(space):
    """Stage s of the light network: its map's width is the fusion's channel count, and heatmaps reach the
    output only through that stage (changing stage changes the fusion's width where widths differ)."""
    genotype = _member(space, fusion_stage=0)
    light = space.light.build(Genotype(space=space.light.name, space_args={},
                                       genotype=genotype.genotype["frames"][0]["light"]))
    widths = [FusedLightNet(light, s, "add", 17).fusion.proj.out_channels for s in range(space.light.num_stages + 1)]
    stem = genotype.genotype["frames"][0]["light"]["stem"]["width"]
    stages = [st["width"] for st in genotype.genotype["frames"][0]["light"]["stages"]]
    assert widths == [stem] + stages


def test_propagated_heatmaps_are_detached(space):
    """Frame 1's loss trains light network 0 but not the key network that produced frame 0's heatmaps."""
    net = space.build(_member(space)).train()
    _perturb_fusions(net)
    out = net(torch.randn(2, 2, 3, 96, 72))
    out[:, 1].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in net.key.parameters())  # (zeros through the stack)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.lights[0].parameters())


def test_warped_heatmaps_follow_the_crop(space):
    """A peak at heatmap (x=10, y=12) of frame 0; frame 1's crop is 8 input pixels (2 heatmap pixels) further
    right, so the heatmap the light network receives peaks at x = 8."""
    from nas.data.video_clips import warp_heatmaps
    heat = torch.zeros(1, 17, 24, 18)
    heat[0, 3, 12, 10] = 1.0
    affines = _translations(1, 2, shift=8.0)
    warped = warp_heatmaps(heat, affines[:, 0], affines[:, 1], (96, 72), (24, 18))
    y, x = divmod(int(warped[0, 3].argmax()), 18)
    assert (y, x) == (12, 8)


def test_round_trip_through_a_file(space, tmp_path):
    genotype = _member(space, seed=3)
    save(genotype, tmp_path / "t.json")
    loaded = load(tmp_path / "t.json")
    assert loaded.genotype == genotype.genotype
    a, b = space.build(genotype), space.build(loaded)
    assert [k for k in a.state_dict()] == [k for k in b.state_dict()]


@pytest.mark.parametrize("edit, field", [
    (lambda g: g.update(cycle=5), "genotype.cycle"),
    (lambda g: g["frames"].pop(), "genotype.frames"),
    (lambda g: g["frames"][1].update(fusion_op="concat"), "genotype.frames[1].fusion_op"),
    (lambda g: g["frames"][0].update(fusion_stage=9), "genotype.frames[0].fusion_stage"),
    (lambda g: g["frames"][0]["light"]["stem"].update(width=999), "genotype.frames[0].light"),
    (lambda g: g["key"].update(space="nope"), "genotype.key"),
    (lambda g: g.pop("key"), "genotype"),
])
def test_validate_names_the_bad_field(space, edit, field):
    genotype = _member(space)
    bad = copy.deepcopy(genotype.genotype)
    edit(bad)
    with pytest.raises(GenotypeError, match=field.replace("[", r"\[").replace("]", r"\]")):
        space.validate(Genotype(space="temporal", space_args=genotype.space_args, genotype=bad))


def test_space_args_are_checked():
    with pytest.raises(Exception, match="cycle_choices"):
        TemporalSpace(cycle_choices=[0])
    with pytest.raises(Exception, match="fusion_op_choices"):
        TemporalSpace(fusion_op_choices=["concat"])
    with pytest.raises(Exception, match="light_space"):
        TemporalSpace(light_space="darts_cells")
    with pytest.raises(Exception, match="not found"):
        TemporalSpace(key="no/such/genotype.json")


def test_a_frozen_key_network_stays_in_eval_mode_and_does_not_learn(space):
    net = space.build(_member(space)).freeze_key()
    net.train()
    assert not net.key.training and net.lights[0].training
    assert all(not p.requires_grad for p in net.key.parameters())
    stats = {k: v.clone() for k, v in net.key.state_dict().items() if "running_mean" in k}
    net(torch.randn(2, 2, 3, 96, 72))
    assert all(torch.equal(stats[k], net.key.state_dict()[k]) for k in stats)  # BN statistics untouched


def test_clip_losses_score_the_frames_they_should():
    """frames_loss: every frame of every clip on its own; temporal_loss: only the light frames while the key
    network is frozen (cycle 1: frames 1 and 3 of a 4-frame clip), all frames with train_key."""
    from nas.engine.clips import frames_loss, temporal_loss
    from nas.pose.loss import KeypointMSELoss

    class Fake(torch.nn.Module):  # heatmaps = frame index t everywhere; cycle 1 (key, light, key, light)
        cycle = 1

        def forward(self, images, affines=None):
            if images.dim() == 4:  # a batch of frames for frames_loss: (B * L, ...), frame index = row % L
                t = torch.arange(images.shape[0]) % 4
                return t.float().view(-1, 1, 1, 1).expand(-1, 2, 3, 3)
            return torch.arange(images.shape[1]).float().view(1, -1, 1, 1, 1).expand(images.shape[0], -1, 2, 3, 3)

    batch = {"images": torch.zeros(2, 4, 3, 8, 8), "affines": torch.zeros(2, 4, 2, 3),
             "targets": torch.zeros(2, 4, 2, 3, 3), "target_weights": torch.ones(2, 4, 2, 1)}
    mse = KeypointMSELoss()  # 0.5 x mean over joints of the per-pixel mean squared error
    assert float(frames_loss(mse)(Fake(), batch)) == pytest.approx(0.5 * (0 + 1 + 4 + 9) / 4)
    assert float(temporal_loss(mse)(Fake(), batch)) == pytest.approx(0.5 * (1 + 9) / 2)
    assert float(temporal_loss(mse, train_key=True)(Fake(), batch)) == pytest.approx(0.5 * (0 + 1 + 4 + 9) / 4)


@pytest.mark.parametrize("op", FUSION_OPS)
def test_a_supernet_path_is_the_built_member_with_inherited_weights(op):
    """The one-shot supernet (one elastic light network shared by the light frames, a fusion per stage and op):
    run on a member's path it gives exactly what the standalone member gives after inheriting its share of the
    weights, for members fusing at every stage."""
    space = TemporalSpace(cycle_choices=[3], fusion_op_choices=[op])
    supernet = space.supernet().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # fusion weights away from their (identity) start, so a wrong slice would show
        for fusion in supernet.fusions.values():
            fusion.weight.add_(0.05 * torch.randn(fusion.weight.shape, generator=g))
            fusion.bias.add_(0.05 * torch.randn(fusion.bias.shape, generator=g))
    x, affines = torch.randn(2, 5, 3, 96, 72), _translations(2, 5)
    stages = space.args["fusion_stage_choices"]
    widest = [st["width"] for st in space.light.largest()["stages"]]
    narrower = 0  # frames fusing at a stage narrower than the supernet's: a member's slice of the fusion
    for seed in range(3):
        genotype = space.sample(random.Random(seed))
        for i, f in enumerate(genotype.genotype["frames"]):
            f["fusion_stage"] = stages[(seed + i) % len(stages)]
            s = f["fusion_stage"]
            narrower += s > 0 and f["light"]["stages"][s - 1]["width"] < widest[s - 1]
        supernet.set_path(genotype)
        member = space.build(genotype, supernet).eval()
        with torch.no_grad():
            assert torch.allclose(supernet(x, affines), member(x, affines), atol=1e-5)
    assert narrower > 0
    supernet.set_path(None)  # the largest light network on the longest cycle
    assert supernet.cycle == 3 and supernet(x).shape == (2, 5, 17, 24, 18)


@pytest.mark.parametrize("op, inputs", [("add", 17), ("cat", 8 + 17)])
def test_per_frame_flops_count_the_fusion_by_hand(space, op, inputs):
    """A light frame fusing at the stem (8 channels at 48 x 36 for a 96 x 72 input) costs its light network
    plus the fusion's 1x1 conv: thop counts output elements x input channels, 8 x 48 x 36 x (17 heatmaps for
    add; 8 + 17 for cat) multiply-adds; the key frame costs the key network alone."""
    from estimators.complexity import count_gflops
    from estimators.temporal_cost import cycle_gflops, frame_gflops, frame_latency_ms
    genotype = _member(space, fusion_stage=0, fusion_op=op)
    net = space.build(genotype)
    costs = frame_gflops(net, (96, 72))
    assert len(costs) == 3 and costs[0] == pytest.approx(count_gflops(net.key, (96, 72)))
    for i, light in enumerate(net.lights):
        assert light.fusion.proj.out_channels == 8
        assert costs[1 + i] - count_gflops(light.net, (96, 72)) == pytest.approx(8 * 48 * 36 * inputs / 1e9)
    assert cycle_gflops(net, (96, 72)) == pytest.approx(sum(costs))
    latency = frame_latency_ms(net, (96, 72), cycles=2, warmup=1)
    assert len(latency["per_position"]) == 3 and all(v > 0 for v in latency["per_position"])
    assert latency["mean_per_frame"] == pytest.approx(sum(latency["per_position"]) / 3)
