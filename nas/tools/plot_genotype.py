"""Draw the cells of a genotype (normal, reduce, fusion for darts_cells) into one PNG.

    python -m nas.tools.plot_genotype genotypes/darts_cells_synthetic_seed0.json [--out cells.png]

The genotype is checked against its space first (as retrain does), so the picture is of a
network that can be built. Spaces without cells (plain_conv) are refused with exit status 2.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nas.cli import user_errors
from nas.genotype import load
from nas.plots import genotype_cells, plot_cells
from nas.spaces import resolve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("genotype", help="a genotype JSON file (e.g. <run_dir>/genotype.json)")
    parser.add_argument("--out", help="PNG to write (default: the genotype path with .png)")
    args = parser.parse_args(argv)
    with user_errors():
        genotype = load(args.genotype)
        genotype_cells(genotype)  # a space without cells: say so before anything else
        resolve(genotype)
        out = plot_cells(genotype, args.out or Path(args.genotype).with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
