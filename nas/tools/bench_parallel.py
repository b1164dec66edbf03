"""Throughput of retrain (images/s) and search (steps/s) for a genotype, in one process or under torchrun.

    python -m nas.tools.bench_parallel GENOTYPE.json [--batch 32] [--steps 20] [--amp bf16] [--device auto]
    torchrun --nproc-per-node=4 -m nas.tools.bench_parallel GENOTYPE.json --batch 32   # 32 per process
    python -m nas.tools.bench_parallel GENOTYPE.json --compare-procs 2                 # 1 x 2B vs 2 x B

Runs the real training step of `nas.retrain` (`Trainer._step`: DistributedDataParallel under torchrun,
autocast and the GradScaler for `--amp`, NHWC with `--channels-last`, `torch.compile` with `--compile`)
and, for a genotype of a gradient space, the real first-order DARTS step on that space's supernet
(gradients averaged over ranks), on random batches of the genotype's input size. Times are medians
over the timed steps after `--warmup` untimed ones, CUDA synchronised, the slowest rank's.
Images/s counts the global batch (per-process batch x processes).

`--compare-procs N` measures data parallelism's overhead on one machine at a fixed global batch and
a fixed number of cores: one process with N threads and batch N x B, against N processes (torchrun,
gloo on the CPU) with one thread each and batch B. Their ratio is the README's DDP overhead figure.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("genotype", help="a genotype JSON file (genotypes/, or a search's genotype.json)")
    p.add_argument("--what", choices=["retrain", "search", "both"], default="both")
    p.add_argument("--batch", type=int, default=32, help="per process")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the retrain network")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: OMP_NUM_THREADS)")
    p.add_argument("--compare-procs", type=int, default=None, metavar="N",
                   help="run 1 process x N threads and N processes x 1 thread at the same global batch")
    p.add_argument("--json", default=None, help="also write the figures here (rank 0)")
    return p.parse_args(argv)


def _batch(n: int, input_size, heatmap_size, keypoints: int, device, seed: int) -> dict:
    import torch
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, *input_size, generator=g).to(device),
            "target": torch.rand(n, keypoints, *heatmap_size, generator=g).to(device),
            "target_weight": torch.ones(n, keypoints, 1).to(device)}


def _time(step, batches: list, warmup: int, steps: int, device) -> float:
    """Median seconds of a step, the slowest rank's."""
    import torch
    from nas.engine import distributed
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(warmup):
        step(batches[i % len(batches)])
    times = []
    for i in range(steps):
        distributed.barrier()
        sync()
        t0 = time.perf_counter()
        step(batches[i % len(batches)])
        sync()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return max(distributed.all_gather_objects(median))


def bench(args: argparse.Namespace) -> dict:
    import torch
    from nas.engine import distributed
    from nas.engine.precision import check_amp
    from nas.engine.runtime import configure_threads, to_memory_format
    from nas.genotype import load
    from nas.pose.loss import KeypointMSELoss
    from nas.spaces import resolve
    world, device = distributed.setup(args.device)
    threads = configure_threads(args.threads)
    amp = check_amp(args.amp, device)
    genotype = load(args.genotype)
    space = resolve(genotype, genotype.space_args)
    keypoints = space.args.get("num_keypoints", 17)
    size, heat = tuple(genotype.input_size), tuple(genotype.heatmap_size)
    batches = [_batch(args.batch, size, heat, keypoints, device, seed=world.rank * 100 + i) for i in range(4)]
    out = {"genotype": str(args.genotype), "device": _device_name(device), "processes": world.size,
           "threads_per_process": threads, "batch_per_process": args.batch, "global_batch": args.batch * world.size,
           "amp": amp, "channels_last": args.channels_last, "input_size": list(size), "torch": torch.__version__}
    if args.what in ("retrain", "both"):
        from nas.engine.train_loop import Trainer
        from nas.retrain import parallel_net
        torch.manual_seed(0)
        model = to_memory_format(space.build(genotype).to(device), args.channels_last)
        net = parallel_net(model, world, device, sync_bn=False, compile_net=args.compile)
        trainer = Trainer(model, KeypointMSELoss(), torch.optim.Adam(model.parameters(), lr=1e-3), 1,
                          args.steps + args.warmup, device, amp=amp, train_net=net)
        model.train()
        seconds = _time(trainer._step, batches, args.warmup, args.steps, device)
        out.update({"retrain_step_s": seconds, "retrain_images_per_s": args.batch * world.size / seconds})
    if args.what in ("search", "both") and hasattr(space, "supernet"):
        supernet = to_memory_format(space.supernet().to(device), args.channels_last)
        if hasattr(supernet, "arch_parameters"):
            from strategies.darts import Darts
            torch.manual_seed(0)
            distributed.broadcast_module(supernet)
            strategy = Darts(space, supernet, KeypointMSELoss(),
                             functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
                             functools.partial(torch.optim.Adam, lr=3e-3), epochs=1,
                             steps_per_epoch=args.steps + args.warmup, amp=amp)
            seconds = _time(lambda b: strategy.step(b, b), batches, args.warmup, args.steps, device)
            out.update({"search_step_s": seconds, "search_steps_per_s": 1.0 / seconds,
                        "search_images_per_s": 2 * args.batch * world.size / seconds})  # train + held-out batch
    return out


def _device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} logical cores)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare(args: argparse.Namespace, argv: list[str]) -> dict:
    """1 process x N threads (batch N x B) against N processes x 1 thread (batch B each)."""
    n = args.compare_procs
    rest = _drop(argv, "--compare-procs", "--batch", "--threads", "--json")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    runs = {}
    for name, cmd, threads in (
            ("1 process", [sys.executable, "-m", "nas.tools.bench_parallel", *rest, "--batch", str(n * args.batch)], n),
            (f"{n} processes", [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}",
                                f"--master-port={_free_port()}", "-m", "nas.tools.bench_parallel", *rest,
                                "--batch", str(args.batch)], 1)):
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_parallel_{os.getpid()}_{len(runs)}.json"
        done = subprocess.run([*cmd, "--threads", str(threads), "--json", str(path)], env=env, text=True,
                              capture_output=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        runs[name] = json.loads(path.read_text())
        path.unlink()
    one, many = runs["1 process"], runs[f"{n} processes"]
    ratios = {k: one[k] / many[k] for k in ("retrain_step_s", "search_step_s") if k in one and k in many}
    return {"runs": runs, "step_time_ratio_1proc_over_nprocs": ratios}


def _drop(argv: list[str], *flags: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        if any(a.startswith(f + "=") for f in flags):
            continue
        out.append(a)
    return out


def report(out: dict) -> None:
    lines = [f"{out['genotype']}: {out['device']}, {out['processes']} process(es) x {out['threads_per_process']} "
             f"thread(s), batch {out['batch_per_process']} per process (global {out['global_batch']}), "
             f"amp {out['amp']}, channels_last {out['channels_last']}, input {out['input_size']}"]
    if "retrain_images_per_s" in out:
        lines.append(f"  retrain: {out['retrain_images_per_s']:.1f} images/s "
                     f"({out['retrain_step_s'] * 1000:.1f} ms/step)")
    if "search_steps_per_s" in out:
        lines.append(f"  search (DARTS 1st order): {out['search_steps_per_s']:.2f} steps/s "
                     f"({out['search_step_s'] * 1000:.1f} ms/step, {out['search_images_per_s']:.1f} images/s)")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.compare_procs:
        result = compare(args, argv)
        for run in result["runs"].values():
            report(run)
        for key, ratio in result["step_time_ratio_1proc_over_nprocs"].items():
            print(f"  {key.split('_')[0]}: step time 1 process / {args.compare_procs} processes = {ratio:.2f} "
                  "(> 1: the processes are faster)")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        return
    from nas.engine import distributed
    out = bench(args)
    if distributed.is_main():
        report(out)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    distributed.shutdown(wait=True)


if __name__ == "__main__":
    main()
