"""Show or redo this machine's speed calibration, the yardstick of drift-corrected latency (estimators/speed.py).

    python -m nas.tools.speed                       # the calibrations kept in the speed file
    python -m nas.tools.speed --input 96 72 --threads 1 [--seconds 30] [--recalibrate]
        # the calibration for that input (made now when missing or with --recalibrate), and the probe's time now

Recalibrate after a change the key does not see (a BIOS or power setting, another VM size): every
drift-corrected figure is relative to it, so compare figures only under one calibration (pareto.json and
nas.profile print which).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np
import torch

from estimators.speed import ProbeTimer, speed_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs=2, type=int, metavar=("H", "W"), help="input size to calibrate for")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1, as the searches time)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    parser.add_argument("--seconds", type=float, default=None, help="calibration length (default 15)")
    parser.add_argument("--recalibrate", action="store_true", help="measure again and replace the kept entry")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = speed_file()
    if args.input is None:
        if not path.exists():
            print(f"{path}: no calibration yet (the first drift-corrected measurement makes one)")
            return 0
        try:
            entries = json.loads(path.read_text())
        except ValueError as err:
            print(f"error: {path} is not valid JSON ({err}); delete it to recalibrate", file=sys.stderr)
            return 2
        print(path)
        for key, entry in sorted(entries.items()):
            probe, median = entry.get("probe_ms", float("nan")), entry.get("median_ms", float("nan"))
            print(f"  {key}: probe {probe:.3f} ms (median {median:.3f}, {entry.get('runs')} runs over "
                  f"{entry.get('seconds')} s, {entry.get('when')})")
        return 0
    if args.seconds is not None and args.seconds <= 0:
        print("error: --seconds must be positive", file=sys.stderr)
        return 2
    if args.threads < 1:
        print("error: --threads must be >= 1", file=sys.stderr)
        return 2
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        timer = ProbeTimer((1, 3, *args.input), args.device, args.threads, args.seconds, args.recalibrate)
        now = [timer.time() for _ in range(50)]
    finally:
        torch.set_num_threads(before)
    print(f"{timer.key}: probe {timer.probe_ms:.3f} ms calibrated {timer.calibration.get('when')} ({path}); "
          f"now {float(np.median(now)):.3f} ms median of 50: the machine runs at "
          f"{timer.probe_ms / float(np.median(now)):.2f}x its calibrated speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
