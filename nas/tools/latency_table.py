"""Build a latency lookup table for a search space on this machine, and report its accuracy.

    python -m nas.tools.latency_table --space vipnas_mbv3 --device cpu --threads 1 \\
        --samples 30 --report 50 --out latency_tables/cpu.json

Times every block of `--samples` random members of the space (batch 1, at `--input`), sets the
constant from their whole-network runs, then compares the table's estimate with the measured latency
of `--report` other random members: the share within +-10%, Kendall's tau, the mean error. The
table (and its accuracy) is added to `--out` under the device and resolution; a search uses it with
`strategy.latency_table=PATH`.
"""
from __future__ import annotations

import argparse
import json
import random
import time

from estimators.latency_table import LatencyTable
from nas.engine.runtime import configure_threads
from nas.spaces import build_space


def _networks(space, count: int, seed: int) -> list:
    rng = random.Random(seed)
    return [space.build(space.sample(rng)).eval() for _ in range(count)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", required=True, help="a name in conf/search_space/")
    parser.add_argument("--space-args", default="{}", help="JSON of constructor overrides")
    parser.add_argument("--input", type=int, nargs=2, default=[96, 72], metavar=("H", "W"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=30, help="networks whose blocks fill the table")
    parser.add_argument("--report", type=int, default=50, help="other networks to check the table on")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per measurement (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="latency_tables/latency.json")
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    space = build_space(args.space, json.loads(args.space_args))
    table = LatencyTable(args.device, tuple(args.input), args.threads, runs=args.runs)
    start = time.time()
    table.build(_networks(space, args.samples, args.seed))
    print(f"{len(table.blocks)} blocks timed from {args.samples} networks, constant "
          f"{table.constant_ms:.3f} ms ({time.time() - start:.0f} s)")
    if args.report:
        acc = table.report(_networks(space, args.report, args.seed + 10_000))
        print(f"accuracy on {acc['networks']} other networks: {acc['within']:.0%} within +-10%, "
              f"Kendall tau {acc['kendall_tau']:.3f}, mean |error| {acc['mean_abs_error']:.1%}, "
              f"max |error| {acc['max_abs_error']:.1%}, measured {min(acc['measured_ms']):.2f}-"
              f"{max(acc['measured_ms']):.2f} ms")
        print(f"{acc['fully_covered']} of them had every block in the table ({acc['within_fully_covered']:.0%} "
              f"within +-10%); the other blocks ({table.missing}) were timed on demand and added")
    print(f"table written to {table.save(args.out)}")


if __name__ == "__main__":
    main()
