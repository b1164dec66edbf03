"""python -m nas.profile GENOTYPE.json [hydra overrides]  ->  params, GFLOPs and latency on stdout

Any genotype of any space: the space is resolved exactly as retrain resolves it (through
conf/search_space/, with `space_args` overrides merged over the genotype's), the network is built
and measured, nothing is trained. GFLOPs are thop MACs at batch 1 (the pose literature's
convention; `GFLOPs_summary_rule` is the HRNet code's count, estimators/complexity.py); latency is the
median of `runs` timed forward passes after `warmup` ones, at `batch_size`; with `drift_correction` (the default)
also at this machine's calibrated speed, which a shared machine's drifting speed does not move (estimators/speed.py;
the first use calibrates for 15 s). Nothing is written unless `out=` names a JSON file (no run directory).
Before the network is built, its size is checked on the meta device against `max_params_m` and
`max_activation_gb` (nas/budget.py); `activation_GB` is that count (leaf-module outputs, batch 1).

    python -m nas.profile genotypes/darts_cells_synthetic_seed0.json +preset=posenas_l18_c48
    python -m nas.profile GENOTYPE.json input_size=[256,192] device=cpu threads=1 latency=false
    python -m nas.profile GENOTYPE.json threads=1 latency_table=latency_tables/cpu.json

A video network (search_space=temporal) is profiled per frame: GFLOPs and online step latency of each
position of its cycle (key frame, light frames), and their mean per frame (`runs` = cycles timed).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from estimators.complexity import count_gflops, count_gflops_summary_rule, count_params
from estimators.latency import measure_latency
from estimators.latency_table import LatencyTable
from estimators.speed import busy_warning
from estimators.temporal_cost import frame_gflops, frame_latency_ms, is_temporal
from nas.budget import check_budget
from nas.cli import positional_to_override, user_errors
from nas.config import register
from nas.engine.runtime import configure_threads, pick_device
from nas.errors import UserError
from nas.genotype import MAX_SIDE, load, size_ok
from nas.spaces import resolve
from nas.utils.io import atomic_write_text

register()


def _check_sizes(cfg: DictConfig, input_size: list) -> None:
    """Catch the values that would only fail deep inside torch, with a message naming the key."""
    if not size_ok(input_size):
        raise UserError(f"input_size must be [height, width] in integers from 1 to {MAX_SIDE}, got {input_size}")
    for key, low in (("batch_size", 1), ("runs", 1), ("warmup", 0)):
        if cfg[key] < low:
            raise UserError(f"{key} must be >= {low}, got {cfg[key]}")


def profile(cfg: DictConfig) -> dict:
    """The network's size and speed as one flat dict (what `out=` writes)."""
    genotype = load(cfg.genotype)
    space_args = {**genotype.space_args, **OmegaConf.to_container(cfg.space_args)}
    space = resolve(genotype, space_args)
    input_size = list(cfg.input_size or genotype.input_size)
    _check_sizes(cfg, input_size)
    size = check_budget(lambda: space.build(genotype), input_size, cfg.max_params_m, cfg.max_activation_gb)
    model = space.build(genotype)
    if is_temporal(model):
        return _profile_temporal(cfg, genotype, space, model, input_size, size)
    result = {"genotype": str(Path(cfg.genotype).resolve()), "space": genotype.space,
              "space_args": space.args, "input_size": input_size, "params": count_params(model),
              "GFLOPs": count_gflops(model, tuple(input_size)),
              "GFLOPs_summary_rule": count_gflops_summary_rule(model, tuple(input_size)),
              "activation_GB": size.activation_bytes / 1e9}
    if cfg.latency:
        device = pick_device(cfg.device)
        threads = configure_threads(cfg.threads) if device.type == "cpu" else None
        stats = measure_latency(model, tuple(input_size), device, cfg.runs, cfg.warmup, cfg.batch_size, threads,
                                drift_correction=cfg.drift_correction)
        result["latency"] = {**stats, "threads": threads}
    if cfg.latency_table:
        table = LatencyTable.load(cfg.latency_table, cfg.table_device, tuple(input_size))
        result["latency_table"] = {"estimate_ms": table.estimate(model), "path": str(cfg.latency_table),
                                   "device": cfg.table_device, "blocks_missing": table.missing}
    if cfg.out:
        atomic_write_text(Path(cfg.out), json.dumps(result, indent=2) + "\n")
    return result


def _profile_temporal(cfg: DictConfig, genotype, space, model, input_size: list, size) -> dict:
    """A video network (search_space=temporal): GFLOPs of each position of its cycle (key frame, light
    frames) and their mean per frame; latency of the online `step()` per position (median over `runs`
    cycles after `warmup`, heatmap warp included) and the mean per frame over a cycle."""
    if cfg.batch_size != 1 or cfg.latency_table:
        raise UserError("a temporal genotype is profiled online at batch 1 without a latency table; drop "
                        "batch_size= and latency_table=")
    per_frame = frame_gflops(model, tuple(input_size))
    positions = ["key"] + [f"light{i}" for i in range(model.cycle)]
    result = {"genotype": str(Path(cfg.genotype).resolve()), "space": genotype.space,
              "space_args": space.args, "input_size": input_size, "params": count_params(model),
              "GFLOPs": sum(per_frame) / len(per_frame), "cycle_GFLOPs": sum(per_frame),
              "GFLOPs_per_position": dict(zip(positions, per_frame)), "activation_GB": size.activation_bytes / 1e9,
              "cycle": model.cycle}
    if cfg.latency:
        device = pick_device(cfg.device)
        threads = configure_threads(cfg.threads) if device.type == "cpu" else None
        stats = frame_latency_ms(model, tuple(input_size), cycles=cfg.runs, warmup=cfg.warmup, device=device,
                                 threads=threads, drift_correction=cfg.drift_correction)
        # the key network on every frame costs its key-frame step each frame: timed interleaved with the light
        # frames, so the ratio holds where the machine's speed drifts between runs (on the 2-core machine the
        # same network's latency varied 1.8x over minutes; a separate timing right after varied the ratio 0.82-0.96)
        result["latency"] = {"per_frame_ms": stats["mean_per_frame"],
                             "preemptions_per_pass": stats["preemptions_per_pass"],
                             "per_position_ms": dict(zip(positions, stats["per_position"])),
                             "key_every_frame_ms": stats["per_position"][0],
                             "cycles": cfg.runs, "device": str(device), "threads": threads}
        if cfg.drift_correction:
            result["latency"].update(corrected_per_frame_ms=stats["corrected_per_frame"],
                                     corrected_per_position_ms=dict(zip(positions, stats["corrected_per_position"])),
                                     probe=stats["probe"])
    if cfg.out:
        atomic_write_text(Path(cfg.out), json.dumps(result, indent=2) + "\n")
    return result


def _report_temporal(result: dict) -> list[str]:
    h, w = result["input_size"]
    costs = ", ".join(f"{k} {v:.4f}" for k, v in result["GFLOPs_per_position"].items())
    lines = [f"{result['genotype']}  (temporal: key frame + {result['cycle']} light frame(s) per cycle)",
             f"input {h}x{w}  params {result['params'] / 1e6:.2f}M ({result['params']:,})  GFLOPs per frame "
             f"{result['GFLOPs']:.4f} (mean over the cycle; cycle {result['cycle_GFLOPs']:.4f}: {costs})"]
    lat = result.get("latency")
    if lat:
        threads = f", {lat['threads']} thread(s)" if lat["threads"] else ""
        each = ", ".join(f"{k} {v:.2f}" for k, v in lat["per_position_ms"].items())
        lines.append(f"latency {lat['per_frame_ms']:.2f} ms per frame (mean over the cycle of each frame's median "
                     f"online step: {each} ms; {lat['cycles']} cycles, batch 1, {lat['device']}{threads})")
        lines.append(f"the key network on every frame: {lat['key_every_frame_ms']:.2f} ms per frame (its step in these "
                     f"cycles); this network's per frame is {lat['per_frame_ms'] / lat['key_every_frame_ms']:.2f} x that")
        if "corrected_per_frame_ms" in lat:
            each = ", ".join(f"{k} {v:.2f}" for k, v in lat["corrected_per_position_ms"].items())
            lines.append(f"drift-corrected: {lat['corrected_per_frame_ms']:.2f} ms per frame ({each} ms); "
                         + _probe_text(lat["probe"]))
        lines += _busy_lines(lat)
    return lines


def _busy_lines(lat: dict) -> list[str]:
    warning = busy_warning(lat.get("preemptions_per_pass"))
    return [f"warning: {warning}"] if warning else []


def _probe_text(probe: dict) -> str:
    """What a drift-corrected figure is relative to, and how fast the machine ran during this measurement."""
    return (f"at this machine's calibrated speed (probe {probe['probe_ms']:.3f} ms, calibrated {probe['calibrated']}, "
            f"{probe['file']}; the probe took {probe['median_now_ms']:.3f} ms now, the machine ran at "
            f"{probe['probe_ms'] / probe['median_now_ms']:.2f}x its calibrated speed)")


def report(result: dict) -> str:
    """The human-readable lines printed to stdout."""
    if "cycle" in result:
        return "\n".join(_report_temporal(result))
    h, w = result["input_size"]
    sizes = {k: v for k, v in result["space_args"].items() if not isinstance(v, (list, dict))}  # not the choices
    lines = [f"{result['genotype']}  ({result['space']}, {json.dumps(sizes)})",
             f"input {h}x{w}  params {result['params'] / 1e6:.2f}M ({result['params']:,})  "
             f"GFLOPs {result['GFLOPs']:.3f}  activations {result['activation_GB']:.3f} GB at batch 1",
             f"GFLOPs by the HRNet code's rule (its, SimpleBaseline's, LPN's and PNFS's tables): "
             f"{result['GFLOPs_summary_rule']:.3f}"]
    lat = result.get("latency")
    if lat:
        threads = f", {lat['threads']} thread(s)" if lat["threads"] else ""
        lines.append(f"latency {lat['median_ms']:.2f} ms median, {lat['mean_ms']:.2f} mean, "
                     f"{lat['p90_ms']:.2f} p90  ({lat['runs']} runs, batch {lat['batch_size']}, "
                     f"{lat['device']}{threads})")
        if "corrected_ms" in lat:
            lines.append(f"drift-corrected latency {lat['corrected_ms']:.2f} ms " + _probe_text(lat["probe"]))
        lines += _busy_lines(lat)
    est = result.get("latency_table")
    if est:
        missing = f", {est['blocks_missing']} block(s) not in the table" if est["blocks_missing"] else ""
        lines.append(f"latency table estimate {est['estimate_ms']:.2f} ms ({est['device']}, {est['path']}{missing})")
    return "\n".join(lines)


@hydra.main(config_path="pkg://conf", config_name="profile", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors(cfg):  # checks cfg first (nas.config.check_config)
        print(report(profile(cfg)))


if __name__ == "__main__":
    sys.argv = positional_to_override(sys.argv, "genotype")
    main()
