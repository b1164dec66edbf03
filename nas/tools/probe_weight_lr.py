"""How fast does the supernet learn with a given weight optimizer? Prints the mean loss of the
first and last 10 of N weight-only steps on the built-in data (CPU, one thread).

    python -m nas.tools.probe_weight_lr --opt sgd --lr 0.05 0.5 2 10 30
    python -m nas.tools.probe_weight_lr --opt adam --lr 0.002
    python -m nas.tools.probe_weight_lr --space fabric --space-arg base_width=16 --lr 1 3 6
"""
from __future__ import annotations

import argparse
import time

import torch

from nas.data.build import synthetic_data
from nas.engine.runtime import configure_threads, make_loader
from nas.pose.loss import KeypointMSELoss
from nas.spaces import build_space


def _space_args(pairs: list[str]) -> dict:
    """key=value pairs, values read as YAML (numbers, lists, strings)."""
    import yaml
    args = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--space-arg {pair!r}: write key=value")
        args[key] = yaml.safe_load(value)
    return args


def probe(opt: str, lr: float, steps: int, data, space: str = "darts_cells", space_args: dict | None = None) -> str:
    torch.manual_seed(0)
    net = build_space(space, space_args or {}).supernet()
    params = net.weight_parameters()
    optimizer = (torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=3e-4) if opt == "sgd"
                 else torch.optim.Adam(params, lr=lr))
    criterion, losses, t0 = KeypointMSELoss(), [], time.time()
    for i, batch in zip(range(steps), make_loader(data.train, 16, True, 0, drop_last=True)):
        loss = criterion(net(batch["image"]), batch["target"], batch["target_weight"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    return f"{opt} lr {lr:g}: loss first 10 steps {first:.6f}, last 10 {last:.6f} ({time.time() - t0:.0f}s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opt", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--lr", type=float, nargs="+", default=[0.05, 0.5, 2.0, 10.0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--space", default="darts_cells", help="a search space with a supernet")
    parser.add_argument("--space-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a space argument (repeat), e.g. base_width=16")
    args = parser.parse_args()
    configure_threads(1)
    data = synthetic_data()
    for lr in args.lr:
        print(probe(args.opt, lr, args.steps, data, args.space, _space_args(args.space_arg)), flush=True)


if __name__ == "__main__":
    main()
