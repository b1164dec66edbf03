"""What reaches the architecture weights of a DARTS search? Runs the default search's strategy (or any
overrides of conf/search.yaml) for N steps with no weight-only warmup and prints, every 10 steps: the
architecture gradient's size, the weight-decay term the optimizer adds to it (coupled decay only), the
alphas' size, Adam's running gradient scale, and the median gap between the best and second-best
softmaxed op weight of the normal cell.

    python -m nas.tools.probe_arch_grads                                   # the defaults
    python -m nas.tools.probe_arch_grads strategy.arch_optimizer._target_=torch.optim.Adam \\
        strategy.arch_optimizer.lr=3e-3                                   # DARTS's own (coupled) Adam

Findings on the built-in data (2026-12-02, 90 steps): the gradients are ~1e-5 because the heatmap
loss averages over pixels; with coupled decay 1e-3 the alphas stop where 1e-3 x alpha cancels them
(|alpha| median 0.003, max 0.02, normal-cell gap 0.0001-0.0004, whatever the learning rate); with
decoupled decay (AdamW) they keep moving (lr 1e-2: |alpha| median 0.09, gap 0.007-0.009 at step 50).
"""
from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from nas.config import register
from nas.data.build import split_by_image
from nas.engine.runtime import configure_threads, forever, make_loader, seed_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("overrides", nargs="*", help="overrides of conf/search.yaml")
    args = parser.parse_args()
    register()
    with initialize_config_module("conf", version_base="1.3"):
        cfg = compose("search", overrides=args.overrides)
    configure_threads(cfg.threads)
    data = instantiate(cfg.data)
    seed_everything(cfg.seed)
    space = instantiate(cfg.search_space)
    net = space.supernet()
    weight_set, arch_set = split_by_image(data.train, cfg.arch_fraction, cfg.seed)
    train = forever(make_loader(weight_set, cfg.batch_size, True, 0, drop_last=True))
    held_out = forever(make_loader(arch_set, cfg.batch_size, True, 0, drop_last=True))
    strategy = instantiate(cfg.strategy, space=space, supernet=net, criterion=instantiate(cfg.criterion),
                           epochs=cfg.epochs, steps_per_epoch=cfg.max_steps_per_epoch or 1)
    strategy.warmup_steps = 0
    group = strategy.a_opt.param_groups[0]
    coupled = type(strategy.a_opt) is not torch.optim.AdamW and not group.get("decoupled_weight_decay", False)
    wd = group.get("weight_decay", 0.0) if coupled else 0.0
    started = time.time()
    for step in range(args.steps):
        metrics = strategy.step(next(train), next(held_out))
        if step % 10 and step != args.steps - 1:
            continue
        grads = torch.cat([a.grad.flatten() for a in strategy.alphas])
        alphas = torch.cat([a.detach().flatten() for a in strategy.alphas])
        state = strategy.a_opt.state[strategy.alphas[0]]
        top2 = net.arch_weights()["normal"].topk(2, dim=-1).values
        print(f"step {step:3d}  loss {metrics['loss']:.5f}  |grad| median {grads.abs().median():.1e} "
              f"max {grads.abs().max():.1e}  decay term median {(wd * alphas.abs()).median():.1e}  "
              f"|alpha| median {alphas.abs().median():.1e} max {alphas.abs().max():.1e}  "
              f"Adam sqrt(v) median {state['exp_avg_sq'].sqrt().median():.1e}  "
              f"normal gap median {(top2[:, 0] - top2[:, 1]).median():.4f}  ({time.time() - started:.0f}s)",
              flush=True)


if __name__ == "__main__":
    main()
