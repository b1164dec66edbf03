"""How fast does the supernet learn with a given weight optimizer? Prints the mean loss of the
first and last 10 of N weight-only steps on the built-in data (CPU, one thread).

    python -m nas.tools.probe_weight_lr --opt sgd --lr 0.05 0.5 2 10 30
    python -m nas.tools.probe_weight_lr --opt adam --lr 0.002
"""
from __future__ import annotations

import argparse
import time

import torch

from nas.data.build import synthetic_data
from nas.engine.runtime import configure_threads, make_loader
from nas.pose.loss import KeypointMSELoss
from search_spaces.darts_cells import DartsCellsSpace


def probe(opt: str, lr: float, steps: int, data) -> str:
    torch.manual_seed(0)
    net = DartsCellsSpace().supernet()
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
    args = parser.parse_args()
    configure_threads(1)
    data = synthetic_data()
    for lr in args.lr:
        print(probe(args.opt, lr, args.steps, data), flush=True)


if __name__ == "__main__":
    main()
