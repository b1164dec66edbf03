"""Time and memory of one DARTS search step: first vs second order, full vs partial channels.

    python -m nas.tools.bench_search [--input H W] [--batch B] [--steps N] [--device cpu|cuda] ...

Each configuration runs the real supernet of the darts_cells space and the real
`strategies.darts.Darts` strategy (warmup_epochs=0, so every step has its architecture step and its
weight step) on random batches shaped like the pose data, in a fresh subprocess of its own, so that
no configuration inherits another's allocator state or caches.

Step time: the median wall time of the timed steps (CUDA: synchronised before and after each);
on CPU also the median process CPU time ("cpu s"), which waiting for a core shared with other
work does not inflate, so its ratios are steadier on a loaded machine.

Peak memory of a step, measured as the growth above what the process holds before the timed steps
(so model, optimizer state and library load are excluded, and only what the steps add is counted):
- CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus memory_allocated()
  before the timed steps.
- CPU: there is no allocator counter, so the process's resident memory is used. The warm-up steps
  run first (lazy library initialisation, optimizer state), then the kernel's peak-RSS mark is reset
  (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0) and the current RSS read; after one more step
  the peak is VmHWM from /proc/self/status. This runs in a second child (not the timed one) with
  MALLOC_MMAP_THRESHOLD_ fixed at 4 KiB, so glibc serves every block of a page or more with mmap
  and returns it to the kernel on free: RSS then follows the live tensors instead of keeping freed
  heap, and the peak growth is the peak of live activations and gradients of a step. (At 64 KiB
  the small low-resolution tensors, most of them with partial channels, reused heap kept from the
  warm-up and went uncounted: K=4 came out 14x smaller, which the saved-activation count below
  contradicts.) Where clear_refs cannot be written, the fallback is ru_maxrss minus the RSS before
  the step, which the warm-up's own peak can only raise. torch.profiler's profile_memory was the
  alternative, but its per-op [memory] events did not carry the tensor allocations here (2.15, CPU).
- Cross-check on either device, "saved MB": the bytes of the distinct tensors autograd saves for
  backward during one forward and loss (saved_tensors_hooks; parameters excluded): the activation
  memory that partial channels are meant to cut, independent of any allocator.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {  # name -> (unrolled, partial_channels)
    "darts 1st order": (False, None),
    "darts 2nd order": (True, None),
    "pc-darts K=4 1st order": (False, 4),
    "pc-darts K=4 2nd order": (True, 4),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from nas.spaces import space_config
    space = space_config("darts_cells")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", nargs=2, type=int, default=[96, 72], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--init-channels", type=int, default=space["init_channels"])
    p.add_argument("--layers", type=int, default=space["layers"])
    p.add_argument("--cell-steps", type=int, default=space["steps"], help="nodes per cell")
    p.add_argument("--reductions", type=int, default=space["reductions"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    p.add_argument("--measure", choices=["time", "memory"], default="time", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def random_batch(args: argparse.Namespace, seed: int, device) -> dict:
    import torch
    g = torch.Generator().manual_seed(seed)
    b, (h, w) = args.batch, args.input
    batch = {"image": torch.randn(b, 3, h, w, generator=g),
             "target": torch.rand(b, 17, h // 4, w // 4, generator=g),
             "target_weight": torch.ones(b, 17, 1)}  # (B, K, 1), as KeypointMSELoss expects
    return {k: v.to(device) for k, v in batch.items()}


def make_strategy(args: argparse.Namespace, unrolled: bool, partial: int | None, device):
    import torch
    from nas.pose.loss import KeypointMSELoss
    from search_spaces.darts_cells import DartsCellsSpace
    from strategies.darts import Darts
    torch.manual_seed(0)
    space = DartsCellsSpace(init_channels=args.init_channels, layers=args.layers, steps=args.cell_steps,
                            reductions=args.reductions, partial_channels=partial)
    supernet = space.supernet().to(device)
    return Darts(space, supernet, KeypointMSELoss(),
                 functools.partial(torch.optim.SGD, lr=0.025, momentum=0.9, weight_decay=3e-4),
                 functools.partial(torch.optim.Adam, lr=3e-3, betas=(0.5, 0.999), weight_decay=1e-3),
                 epochs=1, steps_per_epoch=args.warmup + args.steps, unrolled=unrolled, warmup_epochs=0)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset_worked: bool) -> int:
    if reset_worked:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _timed_steps(strategy, batches: list, steps: int, sync) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of each step."""
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        strategy.step(*batches)
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def child(args: argparse.Namespace) -> dict:
    """Run one configuration in this process: its step times, and/or its peak memory growth."""
    import torch
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    strategy = make_strategy(args, *CONFIGS[args.child], device)
    batches = [random_batch(args, seed, device) for seed in range(2)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        strategy.step(*batches)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        times, _ = _timed_steps(strategy, batches, args.steps, sync)
        peak = torch.cuda.max_memory_allocated() - before
        return {"times": times, "peak_mb": peak / 2 ** 20,
                "saved_mb": saved_bytes(strategy, batches[0]) / 2 ** 20}
    if args.measure == "time":
        times, cpu_times = _timed_steps(strategy, batches, args.steps, sync)
        return {"times": times, "cpu_times": cpu_times}
    reset = _reset_peak_rss()
    before = _rss_bytes()
    _timed_steps(strategy, batches, 1, sync)
    peak = _peak_rss_bytes(reset) - before
    return {"peak_mb": peak / 2 ** 20, "saved_mb": saved_bytes(strategy, batches[0]) / 2 ** 20}


def saved_bytes(strategy, batch: dict) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in one forward + loss."""
    import torch
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        strategy.loss(batch)
    params = {p.untyped_storage().data_ptr() for p in strategy.supernet.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


def run_config(name: str, argv: list[str], device: str) -> dict:
    """CUDA: one child for both figures. CPU: time with the normal allocator, memory in a second
    child with glibc's mmap threshold fixed (it slows allocation, so it must not be timed)."""
    modes = {"time": {}, "memory": {"MALLOC_MMAP_THRESHOLD_": "4096"}}
    result: dict = {}
    for mode, extra_env in (modes.items() if device == "cpu" else [("time", {})]):
        proc = subprocess.run([sys.executable, "-m", "nas.tools.bench_search", *argv, "--child", name,
                               "--measure", mode], capture_output=True, text=True,
                              env={**os.environ, **extra_env})
        if proc.returncode != 0:
            raise SystemExit(f"{name} ({mode}) failed:\n{proc.stderr[-3000:]}")
        result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    result["step_s"] = statistics.median(result["times"])
    if "cpu_times" in result:
        result["cpu_s"] = statistics.median(result["cpu_times"])
    return result


def report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    print(f"device {args.device}, {args.threads} thread(s), input {args.input[0]}x{args.input[1]}, "
          f"batch {args.batch}, C={args.init_channels} L={args.layers} steps={args.cell_steps} "
          f"reductions={args.reductions}, median of {args.steps} steps after {args.warmup} warm-up")
    cpu = args.device == "cpu"
    print(f"{'config':<26}{'step s':>9}{'cpu s' if cpu else '':>9}{'peak MB':>10}{'saved MB':>10}")
    for name, r in results.items():
        cpu_s = f"{r['cpu_s']:>9.3f}" if cpu else " " * 9
        print(f"{name:<26}{r['step_s']:>9.3f}{cpu_s}{r['peak_mb']:>10.1f}{r['saved_mb']:>10.1f}")
    first = results.get("darts 1st order")
    if first and "darts 2nd order" in results:
        ratio = results["darts 2nd order"]["step_s"] / first["step_s"]
        print(f"2nd/1st order step time: {ratio:.2f}  (target <= 2.5; DARTS: 1.0 vs 0.4 GPU-days)"
              f"  {'met' if ratio <= 2.5 else 'MISSED'}")
        if cpu:
            print(f"  same ratio in process CPU time (less sensitive to other load on the machine): "
                  f"{results['darts 2nd order']['cpu_s'] / first['cpu_s']:.2f}")
    if first and "pc-darts K=4 1st order" in results:
        ratio = first["peak_mb"] / results["pc-darts K=4 1st order"]["peak_mb"]
        print(f"1st order peak memory, full / K=4: {ratio:.2f}x  (target >= 2.5x)"
              f"  {'met' if ratio >= 2.5 else 'MISSED'}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    results = {name: run_config(name, argv, args.device) for name in args.configs}
    report(args, results)


if __name__ == "__main__":
    main()
