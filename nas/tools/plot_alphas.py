"""Draw the architecture-weight trajectories of a search (one panel per cell edge, a line per op).

    python -m nas.tools.plot_alphas RUN_DIR [--out alphas.png]
    python -m nas.tools.plot_alphas RUN_DIR/arch_weights.jsonl

Reads <run_dir>/arch_weights.jsonl (one JSON object per epoch, written by the search); works on a
search that is still running. Default output: arch_weights.png beside the jsonl.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nas.cli import user_errors
from nas.plots import plot_arch_weights

JSONL = "arch_weights.jsonl"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help=f"a search run directory, or its {JSONL}")
    parser.add_argument("--out", help="PNG to write (default: arch_weights.png beside the jsonl)")
    args = parser.parse_args(argv)
    source = Path(args.source)
    jsonl = source / JSONL if source.is_dir() else source
    with user_errors():
        if not jsonl.is_file():
            raise FileNotFoundError(f"no {jsonl}: give a search run directory or its {JSONL}")
        out = plot_arch_weights(jsonl, args.out or jsonl.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
