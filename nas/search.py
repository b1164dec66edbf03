"""python -m nas.search [hydra overrides]  ->  <run_dir>/genotype.json

Composes conf/search.yaml, builds the data, the space's supernet and the strategy, and hands over
to the search loop. `resume=true run_dir=<dir>` continues a killed search in its run directory.
"""
from __future__ import annotations

import inspect
import platform
import random
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from estimators.accuracy import HeldOutPoseAccuracy
from estimators.online_accuracy import HeldOutOnlineAccuracy
from nas.budget import check_budget
from nas.cli import user_errors
from nas.config import register
from nas.data.bad_images import BadImageMonitor
from nas.data.build import split_by_image
from nas.data.build_video import VIDEO_DATA, VideoData, check_video_pairing, load_key, split_videos
from nas.engine import distributed
from nas.engine.clips import temporal_loss
from nas.engine.precision import check_amp
from nas.engine.preemption import StopRequests, clear_interrupted
from nas.engine.runtime import (configure_threads, log, make_loader, prepare_run_dir, record_batch, save_config,
                                seed_everything, shared_run_dir, to_memory_format)
from nas.engine.search_loop import EarlyStop, run_search
from nas.errors import UserError
from nas.genotype import save
from nas.tracking import make_logger

register()


def search(cfg: DictConfig) -> Path:
    world, device = distributed.setup(cfg.device)  # torchrun / SLURM ranks, or a single process
    check_amp(cfg.amp, device)
    run_dir = shared_run_dir(Path(HydraConfig.get().runtime.output_dir))
    resume_from = prepare_run_dir(run_dir, cfg.resume, config=cfg)  # refuses a changed config
    early_stop = EarlyStop(_early_stop_rule(cfg))
    configure_threads(cfg.threads)
    data = instantiate(cfg.data)
    seed_everything(cfg.seed)  # after the data: a first-use generation must not shift the RNG
    space = instantiate(cfg.search_space)
    video = check_video_pairing(space, data, "search")
    if video and "loss_fn" not in inspect.signature(get_class(cfg.strategy._target_)).parameters:
        raise UserError(f"strategy={HydraConfig.get().runtime.choices['strategy']} cannot search video networks "
                        "(it trains on image batches); use strategy=evolution")
    if early_stop.rule is not None:  # a rule that cannot read this space's genotypes fails here
        early_stop.check_space(space.sample(random.Random(0)))
    if space.args.get("num_keypoints") != data.num_keypoints:
        raise UserError(f"search_space.num_keypoints={space.args.get('num_keypoints')} but the data has "
                        f"{data.num_keypoints} keypoints; set search_space.num_keypoints={data.num_keypoints}")
    check_budget(space.supernet, data.input_size, cfg.max_params_m, cfg.max_activation_gb)  # before allocating
    # PC-DARTS's partial-channel supernet aborted in its backward pass in NHWC ("corrupted size vs.
    # prev_size", PyTorch 2.14 on the CPU, 2-channel ops, once in CI): it keeps NCHW until that is
    # understood. Not reproduced since (README, "Memory layout")
    channels_last = cfg.channels_last and (getattr(space, "partial_channels", None) or 1) == 1
    if cfg.channels_last and not channels_last:
        log.warning("channels_last=true is not used with search_space.partial_channels: the supernet runs in NCHW")
    supernet = to_memory_format(space.supernet().to(device), channels_last)
    if video and cfg.key_checkpoint:  # the key network from its retrain on video frames, frozen unless train_key
        load_key(supernet, cfg.key_checkpoint, space.key_genotype, freeze=not cfg.train_key)
    distributed.broadcast_module(supernet)  # one start for all ranks
    one_level = bool(OmegaConf.select(cfg, "strategy.one_level", default=False))
    loader_args = dict(workers=cfg.num_workers, drop_last=True, device=device, pin_memory=cfg.pin_memory,
                       persistent_workers=cfg.persistent_workers)
    if video:  # whole training videos held out to score candidates online; the others' clips train the weights
        weight_set, held_videos = split_videos(data.train, cfg.score_videos, cfg.seed)
        arch_set, arch_loader = held_videos, None
    elif one_level:  # weights and architecture from the same training batches: nothing held out
        weight_set, arch_set, arch_loader = data.train, None, None
    else:
        weight_set, arch_set = split_by_image(data.train, cfg.arch_fraction, cfg.seed)
        arch_loader = make_loader(arch_set, cfg.batch_size, True, seed=cfg.seed + 1, **loader_args)
    train_loader = make_loader(weight_set, cfg.batch_size, True, seed=cfg.seed, **loader_args)
    steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
    extras = _strategy_extras(cfg, data, weight_set, arch_set, device)
    strategy = instantiate(cfg.strategy, space=space, supernet=supernet, criterion=instantiate(cfg.criterion),
                           epochs=cfg.epochs, steps_per_epoch=steps, **extras)
    epochs, steps = getattr(strategy, "schedule", lambda: (cfg.epochs, steps))()
    if distributed.is_main():
        save_config(cfg, run_dir)
    batch = record_batch(run_dir, cfg.batch_size, device)
    split = (f"{len(weight_set)} training instances for weights and architecture (one-level)" if one_level
             else f"{len(weight_set)}/{len(arch_set)} training instances for weights/architecture")
    if video:
        split = (f"{len(weight_set)} training clips of {len(weight_set.videos)} videos for the weights, "
                 f"{len(arch_set)} held-out training videos to score candidates online")
    log.info("search: %s + %s on %s (%s), %d epochs x %d steps, batch %s, device %s, run dir %s", space.name,
             type(strategy).__name__, data.name, split, epochs, steps, batch["text"], device, run_dir)
    bad_images = BadImageMonitor((1 if one_level or video else 2) * steps * cfg.batch_size, data.max_bad_fraction)
    with StopRequests(cfg.checkpoint_every_min, requeue=cfg.requeue, device=device,
                      fresh=resume_from is None) as stops, \
            make_logger(cfg.logger, run_dir, cfg, world.rank) as tracker:
        genotype = run_search(strategy, supernet, train_loader, arch_loader, epochs, device, run_dir,
                              resume_from, steps, bad_images, early_stop.rule, stops, tracker)
        path = _finish(genotype, cfg, data, epochs, steps, world, batch, run_dir)
        for name, kind in (("genotype.json", "genotype"), ("arch_weights.png", "arch_weights"),
                           ("pareto.json", "pareto"), ("pareto.png", "pareto")):
            tracker.log_artifact(run_dir / name, kind)  # a missing file is skipped
    return path


def _finish(genotype, cfg: DictConfig, data, epochs: int, steps: int, world: distributed.World, batch: dict,
            run_dir: Path) -> Path:
    """genotype.json (rank 0 writes; every rank gets its path once it exists)."""
    genotype.space = HydraConfig.get().runtime.choices["search_space"]
    genotype.input_size, genotype.heatmap_size = data.input_size, data.heatmap_size
    genotype.provenance = {**genotype.provenance, "strategy": HydraConfig.get().runtime.choices["strategy"],
                           "seed": cfg.seed,
                           "data": data.name, "epochs": epochs, "steps_per_epoch": steps,
                           "processes": world.size, "global_batch": batch["global_batch"],
                           "config": OmegaConf.to_container(cfg, resolve=True),
                           "versions": {"torch": torch.__version__, "python": platform.python_version()}}
    path = run_dir / "genotype.json"
    if distributed.is_main():
        _plot_arch_weights(run_dir)
        save(genotype, path)
        clear_interrupted(run_dir)
    distributed.barrier()  # the file exists for every rank when search() returns
    return path


def _early_stop_rule(cfg: DictConfig) -> str | None:
    """`early_stop`, or `skip_rise` from the deprecated `stop_on_skip_rise=true`."""
    if not cfg.stop_on_skip_rise:
        return cfg.early_stop
    if cfg.early_stop not in (None, "skip_rise"):
        raise UserError(f"stop_on_skip_rise=true contradicts early_stop={cfg.early_stop}; drop "
                        "stop_on_skip_rise (deprecated: it means early_stop=skip_rise)")
    log.warning("stop_on_skip_rise=true is deprecated: use early_stop=skip_rise (or early_stop=darts_plus "
                "for DARTS+'s published rule)")
    return "skip_rise"


def _plot_arch_weights(run_dir: Path) -> None:
    """arch_weights.png beside arch_weights.jsonl, for strategies with architecture weights."""
    if (run_dir / "arch_weights.jsonl").exists():
        from nas.plots import plot_arch_weights
        plot_arch_weights(run_dir / "arch_weights.jsonl", run_dir / "arch_weights.png")


def _strategy_extras(cfg: DictConfig, data, weight_set, arch_set, device) -> dict:
    """What a strategy takes beyond batches, given only to those whose constructor names it: `accuracy`
    (the held-out pose-accuracy estimator that scores candidates), `seed`, `run_dir`, `input_size`,
    `space_name` (the search_space config name the emitted genotype file will carry)."""
    params = inspect.signature(get_class(cfg.strategy._target_)).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    offered = {"seed": cfg.seed, "run_dir": str(HydraConfig.get().runtime.output_dir), "amp": cfg.amp,
               "input_size": tuple(data.input_size),
               "space_name": HydraConfig.get().runtime.choices["search_space"]}  # the name genotype.json gets
    extras = {k: v for k, v in offered.items() if k in params or takes_all}
    if isinstance(data, VideoData):
        return {**extras, **_video_extras(cfg, data, weight_set, arch_set, device)}
    if "accuracy" in params or takes_all:
        extras["accuracy"] = HeldOutPoseAccuracy(arch_set, device, data.flip_pairs, cfg.score_images,
                                                 cfg.seed, calibration=weight_set)
        log.info("candidates are scored on %d people in %d held-out training images",
                 extras["accuracy"].num_instances, len(extras["accuracy"].image_ids))
    return extras


def _video_extras(cfg: DictConfig, data: VideoData, weight_set, held_videos, device) -> dict:
    """A video search's strategy gets the clip loss (`loss_fn`) and the online accuracy on held-out videos."""
    train_key = cfg.train_key if cfg.train_key is not None else not cfg.key_checkpoint
    accuracy = HeldOutOnlineAccuracy(held_videos, weight_set, device, data.sigma, data.input_size, cfg.seed)
    log.info("candidates are scored online on %d people-frames in %d frames of %d held-out training videos; "
             "key network %s", accuracy.num_instances, accuracy.num_frames, len(held_videos),
             "trained with the light networks" if train_key else f"frozen from {cfg.key_checkpoint}")
    return {"loss_fn": temporal_loss(instantiate(cfg.criterion), train_key=train_key), "accuracy": accuracy}


@hydra.main(config_path="pkg://conf", config_name="search", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors(cfg):  # checks cfg first (nas.config.check_config)
        path = search(cfg)
    if distributed.is_main():
        data = HydraConfig.get().runtime.choices["data"]  # a video network retrains on clips, as many per step
        extra = f" data={data} batch_size={cfg.batch_size}" if data in VIDEO_DATA else ""
        print(f"\ngenotype written to {path}\nretrain it with:\n  python -m nas.retrain {path}{extra}")


if __name__ == "__main__":
    main()
