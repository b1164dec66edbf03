"""How much does a light network gain from the previous frame's heatmaps? Trains, on the built-in video data,
a key network on frames, a light network on frames (no fusion) and the same light network with fusion on
clips (key frame, then light frames fed the propagated heatmaps), then runs each online over the val videos
(crops from the previous prediction) and prints OKS AP and the mean latency per frame of:

  key      the key network on every frame
  light    the light network on every frame, no fusion
  cycle    key frame + T light frames without fusion (the same compute as `fused`)
  fused    key frame + T light frames fusing the warped heatmaps of the frame before

    python -m nas.tools.temporal_gain --epochs 8 --cycle 3 --out runs/temporal_gain

The light network is the first sample of vipnas_mbv3's CPU space costing about 0.3 x the key network's
FLOPs (`--light-share`); the key network a genotype file (default the kept darts_cells one). Each trains
with nas.engine's Trainer (clip losses from nas.engine.clips). One seed, CPU-sized: a measurement, not a
study.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from torch import nn

from estimators.complexity import count_gflops
from nas.engine.checkpoint import load_checkpoint
from nas.engine.clips import frames_loss, temporal_loss
from nas.engine.runtime import configure_threads, make_loader
from nas.engine.train_loop import Trainer
from nas.genotype import Genotype, load
from nas.pose.loss import KeypointMSELoss
from nas.pose.online import ImageStepper, run_online
from nas.spaces import build_space, resolve
from search_spaces.temporal import FusedLightNet, TemporalPoseNet


class NoFusion(nn.Module):
    """A light network that ignores the propagated heatmaps (the `cycle` baseline)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, heat: torch.Tensor | None) -> torch.Tensor:
        return self.net(image)


def light_member(space, key_gflops: float, share: float) -> Genotype:
    """The first sample (seeds 0, 1, ...) of the light space costing share +- 25% of the key network's FLOPs."""
    for seed in range(1000):
        genotype = space.sample(random.Random(seed))
        gflops = count_gflops(space.build(genotype).eval(), (96, 72))
        if abs(gflops / key_gflops - share) <= 0.25 * share:
            return genotype
    raise SystemExit(f"no light network at {share:g} x the key network's FLOPs in 1000 samples; change --light-share")


def _train(name: str, model: nn.Module, params, loss_fn, data, args, run_dir: Path, evaluate) -> float:
    if args.score_only:  # the networks an earlier run of this tool trained into --out
        state = load_checkpoint(run_dir / "best.pt")
        model.load_state_dict(state["model"])
        print(f"loaded {name} from {run_dir / 'best.pt'}", flush=True)
        return 0.0
    loader = make_loader(data.train, args.batch, True, args.workers, drop_last=True)
    optimizer = torch.optim.Adam(params, lr=args.lr)
    steps = min(len(loader), args.max_steps_per_epoch or len(loader))
    trainer = Trainer(model, KeypointMSELoss(), optimizer, args.epochs, steps, torch.device("cpu"),
                      lr_min=1e-5, loss_fn=loss_fn)
    start = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer.fit(loader, evaluate, eval_every=0, run_dir=run_dir, resume_from=None)
    print(f"trained {name}: {args.epochs} epochs in {time.time() - start:.0f} s", flush=True)
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--cycle", type=int, default=1, help="T: light frames after each key frame")
    parser.add_argument("--key", default="genotypes/darts_cells_synthetic_seed0.json")
    parser.add_argument("--batch", type=int, default=8, help="clips per step")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--light-share", type=float, default=0.3, help="light FLOPs / key FLOPs")
    parser.add_argument("--fusion-stage", type=int, default=1)
    parser.add_argument("--fusion-op", default="add", choices=("add", "mul", "cat"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-steps-per-epoch", type=int, default=None, help="a cap, for quick runs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/temporal_gain")
    parser.add_argument("--min-score", type=float, default=0.05,
                        help="joints scoring below this do not shape the next online crop")
    parser.add_argument("--score-only", action="store_true",
                        help="do not train: load the networks an earlier run wrote into --out and score them")
    args = parser.parse_args()
    configure_threads(args.threads)
    from nas.data.synthetic.video import synthetic_video_data
    data = synthetic_video_data(clip_length=2 * (args.cycle + 1))
    out = Path(args.out)
    size, sigma, videos = data.input_size, data.sigma, data.val_videos

    def online(stepper, cycle=None, boxes="online"):
        return run_online(stepper, videos, size, boxes=boxes, sigma=sigma, cycle=cycle, min_score=args.min_score)

    def evaluate_image(net):
        net.eval()
        result = online(ImageStepper(net))
        return result.metrics, result.results

    torch.manual_seed(args.seed)
    key_genotype = load(args.key)
    key = resolve(key_genotype).build(key_genotype)
    _train("key", key, key.parameters(), frames_loss(KeypointMSELoss()), data, args, out / "key", evaluate_image)
    light_space = build_space("vipnas_mbv3", {"num_keypoints": data.num_keypoints})
    member = light_member(light_space, count_gflops(key.eval(), size), args.light_share)
    print(f"light network: {json.dumps(member.genotype)}", flush=True)
    torch.manual_seed(args.seed)
    light = light_space.build(member)
    _train("light", light, light.parameters(), frames_loss(KeypointMSELoss()), data, args, out / "light",
           evaluate_image)

    torch.manual_seed(args.seed)
    fused_light = FusedLightNet(light_space.build(member), args.fusion_stage, args.fusion_op, data.num_keypoints)
    temporal = TemporalPoseNet(key, [fused_light] * args.cycle, size).freeze_key()  # one light net, every light frame

    def evaluate_temporal(net):
        net.eval()
        result = online(net, cycle=args.cycle + 1)
        return result.metrics, result.results

    _train("fused", temporal, fused_light.parameters(), temporal_loss(KeypointMSELoss()), data, args,
           out / "fused", evaluate_temporal)

    light.eval()
    temporal.eval()
    baseline = TemporalPoseNet(key, [NoFusion(light)] * args.cycle, size).freeze_key().eval()
    steppers = {"key": (ImageStepper(key), None), "light": (ImageStepper(light), None),
                "cycle": (baseline, args.cycle + 1),
                "fused": (temporal, args.cycle + 1)}
    report = {}
    for name, (stepper, cycle) in steppers.items():
        online_boxes, gt_boxes = online(stepper, cycle), online(stepper, cycle, boxes="gt")
        report[name] = {"AP": online_boxes.metrics["AP"], "AP_gt_boxes": gt_boxes.metrics["AP"],
                        "mean_latency_ms": online_boxes.mean_latency_ms, "latency_ms": online_boxes.latency_ms}
    (out / "report.json").write_text(json.dumps({"args": vars(args), "report": report}, indent=2) + "\n")
    for name, r in report.items():
        per = ", ".join(f"{k}: {v:.2f}" for k, v in r["latency_ms"].items())
        print(f"{name:6s} AP {r['AP']:.4f} (online boxes), {r['AP_gt_boxes']:.4f} (ground-truth boxes)  "
              f"mean latency {r['mean_latency_ms']:.2f} ms/frame  ({per})")


if __name__ == "__main__":
    main()
