"""search_space=temporal end to end: evolution's genes for a cycle of frames, the held-out video split, BatchNorm
recalibration on clips, the video search / retrain / profile commands at tiny size, the key checkpoint."""
from __future__ import annotations

import json
import os
import random
import subprocess

import pytest
import torch
from torch import nn

from estimators.complexity import count_gflops
from estimators.online_accuracy import recalibrate_bn_clips
from nas.errors import UserError
from nas.genotype import Genotype, load, save
from nas.spaces import build_space, resolve
from strategies.genes import crossover, mutate
from tests.helpers import TINY_DATA, module_cmd, run_env

TINY_VIDEO = ["data=synthetic_video", "data.num_train=6", "data.num_val=2", "data.frames=10",
              "data.image_size=[128,128]", "data.max_people=2", "num_workers=0"]
TINY_LIGHT = ["+search_space.light_space_args.width_choices=[[8],[8,16],[16]]",
              "search_space.cycle_choices=[1,2]"]


def _space(**args):
    return build_space("temporal", {"cycle_choices": [1, 2, 3], **args})


# ---- evolution's genes ------------------------------------------------------------------------------
def test_mutation_changes_the_cycle_and_never_the_key():
    space = _space()
    rng = random.Random(0)
    parent = space.sample(rng)
    children = [mutate(space, parent, rng, 0.3) for _ in range(40)]
    for child in children:
        space.validate(child)
        assert child.genotype["key"] == parent.genotype["key"]
        assert len(child.genotype["frames"]) == child.genotype["cycle"]
        assert child.genotype != parent.genotype
    assert len({c.genotype["cycle"] for c in children}) == 3  # all of 1, 2, 3 reached from one parent
    # frames the cut or kept keep their place: a child of the same length differs in few genes
    kept = [c for c in children if c.genotype["cycle"] == parent.genotype["cycle"]]
    assert kept


def test_crossover_takes_whole_frames_from_either_parent():
    space = _space()
    rng = random.Random(3)
    a, b = space.sample(rng), space.sample(rng)
    while a.genotype["cycle"] == b.genotype["cycle"]:
        b = space.sample(rng)
    for _ in range(20):
        child = crossover(space, a, b, rng)
        space.validate(child)
        fa, fb = a.genotype["frames"], b.genotype["frames"]
        assert child.genotype["cycle"] in (len(fa), len(fb))
        for i, frame in enumerate(child.genotype["frames"]):
            assert frame in [f[i] for f in (fa, fb) if len(f) > i]


# ---- data and estimator pieces ------------------------------------------------------------------------
def test_held_out_videos_are_whole_and_never_trained_on(tmp_path):
    from nas.data.build_video import split_videos
    from nas.data.synthetic.video import synthetic_video_data
    data = synthetic_video_data(num_train=6, num_val=1, frames=8, image_size=(128, 128), max_people=2,
                                cache_dir=str(tmp_path), splits=["train"])
    train, held = split_videos(data.train, 2, seed=0)
    names = {v.name for v in held}
    assert len(held) == 2 and len(train.videos) == 4
    assert not names & {v.name for v in train.videos} and not names & {c.video for c in train.clips}
    assert {c.video for c in data.train.clips} - names == {c.video for c in train.clips}
    assert [v.name for v in split_videos(data.train, 2, seed=0)[1]] == [v.name for v in held]  # seeded
    with pytest.raises(UserError, match="score_videos=6"):
        split_videos(data.train, 6, seed=0)


class _ClipBN(nn.Module):
    """A BatchNorm over every frame of the clips, and a frozen one that must keep its statistics."""

    def __init__(self):
        super().__init__()
        self.bn, self.key = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
        self.key.running_mean.fill_(7.0)

    def train(self, mode=True):
        super().train(mode)
        self.key.eval()  # as TemporalPoseNet keeps a frozen key network
        return self

    def forward(self, images, affines):
        x = images.flatten(0, 1)
        return self.key(self.bn(x))


def test_bn_recalibration_on_clips_is_the_plain_mean_and_keeps_frozen_statistics():
    g = torch.Generator().manual_seed(0)
    batches = [{"images": torch.randn(2, 3, 2, 4, 4, generator=g) + 3.0, "affines": None},
               {"images": torch.randn(1, 3, 2, 4, 4, generator=g) - 1.0, "affines": None}]
    net = _ClipBN().eval()
    recalibrate_bn_clips(net, batches)
    # the plain average of the per-batch means (momentum None), computed by hand from the inputs
    means = [b["images"].transpose(0, 2).reshape(2, -1).mean(1) for b in batches]
    assert torch.allclose(net.bn.running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    assert torch.allclose(net.key.running_mean, torch.full((2,), 7.0))
    assert net.bn.momentum == 0.1 and not net.training


def test_a_video_networks_costs_are_per_frame():
    from estimators.constraints import CandidateCost
    space = _space(cycle_choices=[2])
    genotype = space.sample(random.Random(1))
    net = space.build(genotype)
    costs = CandidateCost((96, 72)).costs(genotype, net)
    key = count_gflops(net.key, (96, 72))
    lights = [count_gflops(light.net, (96, 72)) for light in net.lights]  # without fusion: below the frame's
    assert costs["cycle_GFLOPs"] > key + sum(lights)
    assert costs["GFLOPs"] == pytest.approx(costs["cycle_GFLOPs"] / 3)
    assert costs["params_M"] * 1e6 == sum(p.numel() for p in net.parameters())


# ---- the commands -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def video_search(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("temporal")
    cache = tmp / "cache"
    args = [*TINY_VIDEO, *TINY_LIGHT, "search_space=temporal", "strategy=evolution", "strategy.supernet_steps=3",
            "strategy.population=3", "strategy.generations=1", "strategy.parents=2", "strategy.mutations=2",
            "strategy.crossovers=1", "strategy.constraints.latency_ms=100", "strategy.constraints.latency_runs=4",
            "strategy.constraints.verify_runs=6",
            "epochs=1", "batch_size=4", "score_videos=1", f"run_dir={tmp / 'search'}"]
    proc = subprocess.run(module_cmd("nas.search", *args), capture_output=True, text=True, timeout=300,
                          env=run_env(cache), cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, cache, proc


def test_video_search_writes_a_temporal_genotype_and_a_front_with_the_references(video_search):
    tmp, _, proc = video_search
    genotype = load(tmp / "search" / "genotype.json")
    assert genotype.space == "temporal"
    resolve(genotype).validate(genotype)
    assert genotype.provenance["costs"]["latency_ms"] <= 100
    # timed again over verify_runs before it was kept, drift-corrected against the tests' speed file
    assert 0 < genotype.provenance["costs"]["measured_latency_ms"] <= 100
    assert genotype.provenance["latency"].startswith("drift-corrected")
    report = json.loads((tmp / "search" / "pareto.json").read_text())
    assert report["latency_calibration"]["file"] == os.environ["POSENAS_SPEED_FILE"]
    labels = [r["label"] for r in report["references"]]
    assert labels == ["key network on every frame", "best, light frames without fusion"]
    key_ref = report["references"][0]
    key = Genotype.from_dict(genotype.genotype["key"])
    assert key_ref["GFLOPs"] == pytest.approx(count_gflops(resolve(key).build(key), (96, 72)))
    assert (tmp / "search" / "pareto.png").stat().st_size > 0
    assert "data=synthetic_video" in proc.stdout  # the printed retrain command names the video data


def test_temporal_retrain_scores_online_and_reports_per_frame_costs(video_search):
    tmp, cache, _ = video_search
    genotype = tmp / "search" / "genotype.json"
    proc = subprocess.run(module_cmd("nas.retrain", str(genotype), *TINY_VIDEO, "epochs=1", "max_steps_per_epoch=2",
                                     "batch_size=4", f"run_dir={tmp / 'retrain'}"),
                          capture_output=True, text=True, timeout=300, env=run_env(cache), cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp / "retrain" / "results.json").read_text())
    cycle = load(genotype).genotype["cycle"]
    positions = ["key"] + [f"light{i}" for i in range(cycle)]
    assert list(results["latency_ms_per_position"]) == positions
    assert results["latency_ms_per_frame"] == pytest.approx(sum(results["latency_ms_per_position"].values())
                                                            / (cycle + 1))
    assert 0.0 <= results["AP"] <= 1.0 and 0.0 <= results["AP_gt_boxes"] <= 1.0
    assert results["latency_ms_per_frame_corrected"] > 0 and "drift-corrected" in proc.stdout
    assert 0.0 <= results["AP_no_fusion"] <= 1.0 and 0.0 <= results["AP_gt_boxes_no_fusion"] <= 1.0
    assert "without fusion (the same networks" in proc.stdout
    assert "ms/frame" in proc.stdout and "(online crops;" in proc.stdout
    # the clips were rounded up to whole cycles
    rounded = f"data.clip_length 4 -> 6: whole cycles of 1 + {cycle} frames" in proc.stdout + proc.stderr
    assert rounded == (cycle == 2)


def test_profile_of_a_temporal_genotype_reports_each_frame(video_search, tmp_path):
    tmp, cache, _ = video_search
    genotype = load(tmp / "search" / "genotype.json")
    out = tmp_path / "p.json"
    proc = subprocess.run(module_cmd("nas.profile", str(tmp / "search" / "genotype.json"), "threads=1", "runs=3",
                                     "warmup=1", f"out={out}"), capture_output=True, text=True, timeout=120,
                          env=run_env(cache), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    key = Genotype.from_dict(genotype.genotype["key"])
    assert result["GFLOPs_per_position"]["key"] == pytest.approx(count_gflops(resolve(key).build(key), (96, 72)))
    assert len(result["latency"]["per_position_ms"]) == genotype.genotype["cycle"] + 1
    lat = result["latency"]
    assert lat["key_every_frame_ms"] == lat["per_position_ms"]["key"]  # the key frame's step, every frame
    assert "ms per frame" in proc.stdout and "the key network on every frame:" in proc.stdout
    corrected = lat["corrected_per_position_ms"]
    assert lat["corrected_per_frame_ms"] == pytest.approx(sum(corrected.values()) / len(corrected))
    assert list(corrected) == list(lat["per_position_ms"]) and "drift-corrected:" in proc.stdout


def test_key_checkpoint_loads_and_freezes_or_is_refused(tmp_path):
    from nas.data.build_video import load_key
    from nas.engine.checkpoint import save_checkpoint
    space = _space(cycle_choices=[1])
    genotype = space.sample(random.Random(0))
    key = Genotype.from_dict(genotype.genotype["key"])
    donor = resolve(key).build(key)
    with torch.no_grad():
        for p in donor.parameters():
            p.fill_(0.25)
    save_checkpoint(tmp_path / "best.pt", {"genotype": key.to_dict(), "model": donor.state_dict()})
    net = space.build(genotype)
    load_key(net, str(tmp_path / "best.pt"), key)
    assert all(float(p.mean()) == 0.25 and not p.requires_grad for p in net.key.parameters())
    assert all(p.requires_grad for p in net.lights.parameters())
    tuned = space.build(genotype)
    load_key(tuned, str(tmp_path / "best.pt"), key, freeze=False)  # train_key=true: loaded, still learning
    assert all(float(p.mean()) == 0.25 and p.requires_grad for p in tuned.key.parameters())
    other = build_space("plain_conv", {})
    member = other.sample(random.Random(0))
    save_checkpoint(tmp_path / "other.pt", {"genotype": member.to_dict(), "model": other.build(member).state_dict()})
    with pytest.raises(UserError, match="is not a network of the key genotype"):
        load_key(space.build(genotype), str(tmp_path / "other.pt"), key)
    with pytest.raises(UserError, match="not found"):
        load_key(space.build(genotype), str(tmp_path / "missing.pt"), key)


@pytest.mark.parametrize("args, message", [
    (["search_space=temporal", "strategy=evolution", *TINY_DATA], "add data=synthetic_video"),
    ([*TINY_VIDEO, "strategy=darts"], "takes only for search_space=temporal"),
    ([*TINY_VIDEO, "search_space=temporal", "strategy=darts"], "use strategy=evolution"),
])
def test_video_and_image_mismatches_are_one_line_errors(video_search, tmp_path, args, message):
    _, cache, _ = video_search  # its generated data
    proc = subprocess.run(module_cmd("nas.search", *args, f"run_dir={tmp_path / 'r'}", "epochs=1"),
                          capture_output=True, text=True, timeout=120, env=run_env(cache), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if message in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "last.pt").exists()


def test_temporal_parts_are_the_networks_inside(tmp_path):
    from nas.tools.temporal_parts import main
    space = _space(cycle_choices=[2])
    genotype = space.sample(random.Random(2))
    genotype.space = "temporal"
    save(genotype, tmp_path / "t.json")
    assert main([str(tmp_path / "t.json"), "--out", str(tmp_path / "parts")]) == 0
    net = space.build(genotype)
    for i in range(2):
        part = load(tmp_path / "parts" / f"light{i}.json")
        light = resolve(part).build(part)
        assert [p.shape for p in light.parameters()] == [p.shape for p in net.lights[i].net.parameters()]
    key = load(tmp_path / "parts" / "key.json")
    assert key.to_dict()["genotype"] == genotype.genotype["key"]["genotype"]
    before = (tmp_path / "parts" / "key.json").read_bytes()
    assert main([str(tmp_path / "t.json"), "--out", str(tmp_path / "parts")]) == 2  # no overwrite
    assert (tmp_path / "parts" / "key.json").read_bytes() == before
