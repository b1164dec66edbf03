"""Latency that survives a machine whose speed drifts: time a fixed probe network beside the network measured.

On a shared machine (a cloud VM, a busy node) the same forward pass can take 1.8x longer for minutes at a time
because of other tenants; a median over a few hundred runs does not help when the whole run falls in a slow
spell. The ratio of two networks timed alternately hardly moves, though: both slow down together. So each
timed pass of the measured network is followed by one pass of `SpeedProbe`, a small fixed convolutional network,
(twice: the second pass is timed, so it does not pay for what the network left in the caches), and the
drift-corrected latency is

    median over the runs of (network time / probe time)  x  the probe's calibrated time on this machine,

where the calibration is the probe's 1st-percentile time over `seconds` of back-to-back runs (its time on the
machine when nothing else slows it), measured once per machine, device, thread count and input and kept in a
JSON file (`$POSENAS_SPEED_FILE`, else speed.json in $POSENAS_CACHE, default ~/.cache/posenas).
Every drift-corrected figure on one machine shares that calibration, so a search's latency and a later
`nas.profile` of its genotype compare; on an unloaded machine the corrected and raw medians agree.
`python -m nas.tools.speed` shows or redoes the calibration.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

FILE_ENV = "POSENAS_SPEED_FILE"
SECONDS_ENV = "POSENAS_CALIBRATION_S"  # the calibration's length when not given (tests make it short)
DEFAULT_SECONDS = 15.0
PERCENTILE = 1.0


class SpeedProbe(nn.Module):
    """A fixed small pose-like network (dense and depthwise 3x3 convolutions, 1x1 projections, BatchNorm,
    ReLU, an upsampling head): the yardstick the measured networks are timed against. Its weights are drawn
    from a fixed seed; only its speed matters."""

    def __init__(self, keypoints: int = 17):
        super().__init__()
        layers: list[nn.Module] = []
        # (in, out, kernel, stride, groups)
        for cin, cout, k, s, g in ((3, 16, 3, 2, 1), (16, 32, 3, 1, 1), (32, 32, 3, 2, 32), (32, 48, 1, 1, 1),
                                   (48, 48, 3, 1, 48), (48, 64, 1, 2, 1), (64, 64, 3, 1, 1)):
            layers += [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        layers += [nn.Upsample(scale_factor=2.0), nn.Conv2d(64, keypoints, 1)]
        self.body = nn.Sequential(*layers)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


BUSY_PREEMPTIONS = 0.2  # involuntary context switches per timed pass above which a measurement is flagged


class Preemptions:
    """Involuntary context switches of this process over a block (getrusage; None where the OS has no count).

    Drift correction covers a machine running slower, not one whose cores are shared out in time slices among
    more runnable processes than cores: then a long pass is cut into pieces while a short probe pass mostly fits
    in one slice, and both the raw and the corrected figures come out inflated (on the 2-core machine, beside a
    4-process test run: 0.7 switches per pass, the corrected figure 6.5-10 ms for a network at 4.9 ms idle;
    0.03-0.04 per pass on the idle machine).
    Measurements report `preemptions_per_pass`; above BUSY_PREEMPTIONS the commands warn."""

    def __enter__(self) -> "Preemptions":
        self.start, self.count = _involuntary_switches(), None
        return self

    def __exit__(self, *exc) -> None:
        end = _involuntary_switches()
        self.count = None if end is None or self.start is None else end - self.start

    def per_pass(self, passes: int) -> float | None:
        return None if self.count is None else self.count / max(1, passes)


def _involuntary_switches() -> int | None:
    try:
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw)
    except (ImportError, AttributeError, OSError):
        return None


def busy_warning(preemptions_per_pass: float | None) -> str | None:
    """The one-line warning for a measurement taken while other processes competed for the cores, or None."""
    if preemptions_per_pass is None or preemptions_per_pass <= BUSY_PREEMPTIONS:
        return None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"the timing process was preempted {preemptions_per_pass:.2f} times per pass (load average {load:.1f} on "
            f"{os.cpu_count()} cores): other processes were competing for the cores, so these latencies, raw and "
            f"drift-corrected, are inflated; measure again on an idle machine")


def speed_file() -> Path:
    """$POSENAS_SPEED_FILE, else speed.json in the project's cache ($POSENAS_CACHE, default ~/.cache/posenas)."""
    if os.environ.get(FILE_ENV):
        return Path(os.environ[FILE_ENV])
    return Path(os.environ.get("POSENAS_CACHE") or Path.home() / ".cache" / "posenas") / "speed.json"


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(device: torch.device, threads: int | None, shape: Sequence[int]) -> str:
    """What a calibration holds for: processor (or GPU), torch version, device, threads, input shape."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{_processor()}, {torch.get_num_threads() if threads is None else threads} thread(s)"
    return f"{where} | torch {torch.__version__} | {device.type} | input {'x'.join(str(int(s)) for s in shape)}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_once(module: nn.Module, x: torch.Tensor) -> float:
    """Milliseconds of one forward pass (CUDA synchronised)."""
    _sync(x.device)
    start = time.perf_counter()
    module(x)
    _sync(x.device)
    return (time.perf_counter() - start) * 1e3


@torch.inference_mode()
def calibrate(probe: nn.Module, x: torch.Tensor, seconds: float) -> dict[str, float]:
    """The probe's PERCENTILE-th percentile time over `seconds` of back-to-back passes (at least 20)."""
    for _ in range(5):
        time_once(probe, x)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 20:
        times.append(time_once(probe, x))
    return {"probe_ms": float(np.percentile(times, PERCENTILE)), "median_ms": float(np.median(times)),
            "runs": len(times), "seconds": float(seconds)}


def _read(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("ignoring an unreadable speed calibration file %s (it will be rewritten)", path)
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, key: str, entry: dict) -> None:
    """Merge one entry into the file, atomically (several processes may calibrate at once)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read(path)
        data[key] = entry
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as err:  # a read-only home still measures, it only recalibrates next time
        log.warning("could not keep the speed calibration in %s (%s); set %s to a writable file", path, err, FILE_ENV)


class ProbeTimer:
    """The probe on `device` for inputs of `shape` (N, 3, H, W), with its calibration (`probe_ms`): loaded from
    the speed file, or measured now (`seconds`, default $POSENAS_CALIBRATION_S or 15) and kept there."""

    def __init__(self, shape: Sequence[int], device: str | torch.device = "cpu", threads: int | None = None,
                 seconds: float | None = None, refresh: bool = False):
        self.device = torch.device(device)
        self.probe = SpeedProbe().to(self.device)
        self.x = torch.zeros(*shape, device=self.device)
        self.key = machine_key(self.device, threads, shape)
        self.path = speed_file()
        entry = None if refresh else _read(self.path).get(self.key)
        if not (isinstance(entry, dict) and isinstance(entry.get("probe_ms"), (int, float)) and entry["probe_ms"] > 0):
            seconds = float(os.environ.get(SECONDS_ENV, DEFAULT_SECONDS)) if seconds is None else float(seconds)
            log.info("calibrating this machine's speed for drift-corrected latency (%.0f s, once; kept in %s)",
                     seconds, self.path)
            entry = {**calibrate(self.probe, self.x, seconds), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
            _write(self.path, self.key, entry)
        self.calibration = entry
        self.probe_ms = float(entry["probe_ms"])

    def time(self) -> float:
        """The probe's time now, as calibrated: two passes, the second timed. The first takes the cache effects
        of whatever ran before (a darts_cells network leaves the probe's first pass ~10% slower than a probe
        after a probe), so the timed pass runs in the state the calibration's back-to-back passes ran in."""
        time_once(self.probe, self.x)
        return time_once(self.probe, self.x)

    def corrected(self, times: Sequence[float], probe_times: Sequence[float]) -> float:
        """median(times[i] / probe_times[i]) x the probe's calibrated time: ms at the calibrated speed."""
        if len(times) != len(probe_times) or not times:
            raise ValueError("need one probe time per timed pass")
        ratios = np.asarray(times, dtype=float) / np.asarray(probe_times, dtype=float)
        return float(np.median(ratios) * self.probe_ms)

    def describe(self) -> dict[str, object]:
        return {"probe_ms": self.probe_ms, "calibrated": self.calibration.get("when"), "file": str(self.path),
                "machine": self.key}
