"""Draw a genotype into one PNG: the cells (normal, reduce, fusion for darts_cells), or each part's fabric.

    python -m nas.tools.plot_genotype genotypes/darts_cells_synthetic_seed0.json [--out cells.png]
    python -m nas.tools.plot_genotype <run_dir>/genotype.json      (a fabric search's genotype)

The genotype is checked against its space first (as retrain does), so the picture is of a
network that can be built. Spaces with neither cells nor fabrics (plain_conv) are refused with exit status 2.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nas.cli import user_errors
from nas.genotype import load
from nas.plots import genotype_cells, is_fabric, plot_cells, plot_fabric
from nas.spaces import resolve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("genotype", help="a genotype JSON file (e.g. <run_dir>/genotype.json)")
    parser.add_argument("--out", help="PNG to write (default: the genotype path with .png)")
    args = parser.parse_args(argv)
    out = args.out or Path(args.genotype).with_suffix(".png")
    with user_errors():
        genotype = load(args.genotype)
        fabric = is_fabric(genotype)
        if not fabric:
            genotype_cells(genotype)  # a space without cells: say so before anything else
        resolve(genotype)
        out = plot_fabric(genotype, out) if fabric else plot_cells(genotype, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
