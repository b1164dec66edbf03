"""The model-zoo table of the README: every shipped genotype's size, speed and published accuracy.

    python -m nas.tools.zoo_table --threads 1 --runs 5 --out zoo.md [--glob 'hrnet_*']

For each genotypes/*.json: family (space), input size, parameters, GFLOPs as thop counts them (the
project's figure) and by the HRNet code's rule (the figure the HRNet / SimpleBaseline / LPN tables use),
CPU latency at batch 1 (median of `--runs` timed forward passes after one warm-up, `--threads` threads),
and the published figures the file records (provenance.published), with their source. Nothing is
trained; a markdown table goes to stdout and to `--out`.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from estimators.complexity import count_gflops, count_gflops_summary_rule, count_params
from estimators.latency import measure_latency
from nas.genotype import load
from nas.spaces import resolve

GENOTYPES = Path(__file__).resolve().parents[2] / "genotypes"


def _published(genotype) -> str:
    published = (genotype.provenance or {}).get("published") or {}
    parts = [f"{k} {v}" for k, v in published.items()]
    return ", ".join(parts) if parts else "-"


def row(path: Path, threads: int, runs: int) -> str:
    genotype = load(path)
    model = resolve(genotype).build(genotype).eval()
    size = tuple(genotype.input_size)
    latency = measure_latency(model, size, "cpu", runs=runs, warmup=1, threads=threads)["median_ms"]
    return (f"| {path.stem} | {genotype.space} | {size[0]}x{size[1]} | {count_params(model) / 1e6:.2f} | "
            f"{count_gflops(model, size):.3f} | {count_gflops_summary_rule(model, size):.3f} | {latency:.1f} | "
            f"{_published(genotype)} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--glob", default="*.json", help="which files of genotypes/ (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = sorted(GENOTYPES.glob(args.glob))
    if not paths:
        raise SystemExit(f"error: no genotype file matches genotypes/{args.glob}")
    lines = [f"Measured by `python -m nas.tools.zoo_table --threads {args.threads} --runs {args.runs}` on "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}.", "",
             "| genotype | space | input | params (M) | GFLOPs (thop) | GFLOPs (HRNet rule) | CPU ms, batch 1 "
             "| published |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for path in paths:
        line = row(path, args.threads, args.runs)
        print(line, flush=True)
        lines.append(line)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
