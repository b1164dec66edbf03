"""python -m nas.retrain GENOTYPE.json [hydra overrides]  ->  <run_dir>/results.json, best.pt

Builds the genotype's standalone network (the space is resolved only through conf/search_space/),
trains it, evaluates it with flip test on the validation split (through the dataset's own metric:
COCO OKS AP for COCO-style data, PCKh for MPII; best.pt is picked by that primary metric)
and writes results.json with the metrics, params and GFLOPs.

Model selection: the best epoch is picked on the same validation split its metrics are reported on,
as HRNet and MMPose do (their published numbers are the best validation epoch's). That is an optimistic
estimate, so results.json also holds the last epoch's metrics under "last" (no selection), and says
so under "model_selection". The flat metric keys are the best epoch's, those of best.pt; its predictions
are best_predictions.json, the last epoch's last_predictions.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from estimators.complexity import count_gflops, count_params
from nas.budget import check_budget
from nas.cli import positional_to_override, user_errors
from nas.config import register
from nas.data.bad_images import BadImageMonitor
from nas.data.build_video import VideoData, check_video_pairing
from nas.engine.checkpoint import load_checkpoint
from nas.engine import distributed, video
from nas.engine.precision import autocast, check_amp
from nas.engine.preemption import StopRequests, clear_interrupted
from nas.engine.runtime import (check_decoder, configure_threads, log, make_loader, prepare_run_dir, record_batch,
                                save_config, seed_everything, shared_run_dir, to_memory_format)
from nas.engine.sampling import full_pass_batches
from nas.engine.train_loop import BEST_PREDICTIONS, LAST_PREDICTIONS, Trainer
from nas.errors import UserError
from nas.genotype import load
from nas.tracking import make_logger
from nas.data.topdown import set_target_sigmas
from nas.pose.loss import HeatmapOutput, MultiHeatmapLoss, distinct_sigmas
from nas.pose.predict import predict_coco
from nas.pose.pretrained import describe
from nas.spaces import resolve
from nas.utils.io import atomic_write_text

register()


def retrain(cfg: DictConfig) -> dict:
    genotype = load(cfg.genotype)
    check_decoder(cfg.decode)
    space_args = {**genotype.space_args, **OmegaConf.to_container(cfg.space_args)}
    space = resolve(genotype, space_args)
    check_budget(lambda: space.build(genotype), cfg.input_size or genotype.input_size,  # before allocating
                 cfg.max_params_m, cfg.max_activation_gb)
    world, device = distributed.setup(cfg.device)  # torchrun / SLURM ranks, or a single process
    amp = check_amp(cfg.amp, device)
    run_dir = shared_run_dir(Path(HydraConfig.get().runtime.output_dir))
    resume_from = prepare_run_dir(run_dir, cfg.resume, config=cfg)  # refuses a changed config
    configure_threads(cfg.threads)
    input_size = list(cfg.input_size or genotype.input_size)
    heatmap_size = list(cfg.heatmap_size or genotype.heatmap_size)
    data = instantiate(cfg.data, input_size=input_size, heatmap_size=heatmap_size,
                       **video.clip_length(cfg.data, genotype))
    on_video = check_video_pairing(space, data, "retrain")  # clips: online evaluation (nas/engine/video.py)
    seed_everything(cfg.seed)  # after the data: a first-use generation must not shift the RNG
    model = space.build(genotype)
    if space.args.get("num_keypoints", data.num_keypoints) != data.num_keypoints:
        raise UserError(f"the genotype's network predicts {space.args['num_keypoints']} keypoints but "
                        f"data={data.name} has {data.num_keypoints}")
    if cfg.pretrained and resume_from is None:  # a resume has the trained weights
        _load_pretrained(model, cfg.pretrained, genotype.space)
    model = to_memory_format(model.to(device), cfg.channels_last)
    criterion = instantiate(cfg.criterion) if on_video else _criterion(cfg, model, data)
    loss_fn = video.prepare(model, cfg, criterion, resume_from is not None, genotype) if on_video else None
    loader_args = dict(workers=cfg.num_workers, device=device, pin_memory=cfg.pin_memory,
                       persistent_workers=cfg.persistent_workers)
    train_loader = make_loader(data.train, cfg.batch_size, True, drop_last=True, seed=cfg.seed, **loader_args)
    val_loader = None if on_video else make_loader(data.val, cfg.eval_batch_size, False, shard=True, **loader_args)
    train_net = parallel_net(model, world, device, cfg.sync_bn, cfg.compile)
    lr = _learning_rate(cfg, world.size)
    batch = record_batch(run_dir, cfg.batch_size, device, lr, cfg.optimizer.lr, cfg.lr_scaling)
    stops = StopRequests(cfg.checkpoint_every_min, requeue=cfg.requeue, device=device, fresh=resume_from is None)
    trainer = Trainer(model, criterion, instantiate(cfg.optimizer, lr=lr)(model.parameters()),
                      cfg.epochs, _steps(full_pass_batches(train_loader), cfg.max_steps_per_epoch), device,
                      cfg.lr_min, cfg.grad_clip,
                      best_extra={"genotype": {**genotype.to_dict(), "space_args": space_args},
                                  "input_size": input_size, "heatmap_size": heatmap_size},
                      primary_metric=data.val.primary_metric,
                      bad_images=BadImageMonitor(len(data.train), data.max_bad_fraction),
                      amp=amp, train_net=train_net, stops=stops, loss_fn=loss_fn,
                      schedule=dict(kind=cfg.lr_schedule, steps=list(cfg.lr_steps), factor=cfg.lr_factor,
                                    warmup_iters=cfg.warmup_iters, warmup_ratio=cfg.warmup_ratio))
    if distributed.is_main():
        save_config(cfg, run_dir)
    log.info("retrain %s (%s) on %s: %d instances, %d epochs, input %s, batch %s, lr %g, device %s%s, run dir %s",
             cfg.genotype, genotype.space, data.name, len(data.train), cfg.epochs, input_size, batch["text"], lr,
             device, f", amp {amp}" if amp else "", run_dir)

    def evaluate_images(net):
        distributed.broadcast_module(net)  # rank 0's BatchNorm statistics on every rank
        with autocast(amp, device):
            preds = predict_coco(net, val_loader, device, data.flip_pairs, flip=cfg.flip_test,
                                 nms=data.nms, nms_threshold=data.nms_threshold,
                                 decode=cfg.decode, sigma=data.val.sigma, gather_total=len(data.val))
        # scored once, on rank 0 (pycocotools); the same scores on every rank
        scores = distributed.broadcast_object(data.val.evaluate(preds) if distributed.is_main() else None)
        return scores, preds  # the trainer writes the predictions files

    # video: every track of the val videos followed online, on each rank alike (the videos are few)
    evaluate = video.online_evaluator(data, device, cfg.decode) if on_video else evaluate_images

    with stops, make_logger(cfg.logger, run_dir, cfg, world.rank) as tracker:
        trainer.tracker = tracker
        fitted = trainer.fit(train_loader, evaluate, cfg.eval_every, run_dir, resume_from)
        results = _results(fitted, model, cfg, data, genotype, input_size, heatmap_size, run_dir)
        tracker.log_artifact(run_dir / "results.json", "results")
    return results


def _results(fitted: dict, model: nn.Module, cfg: DictConfig, data, genotype, input_size: list, heatmap_size: list,
             run_dir: Path) -> dict:
    """results.json from the best checkpoint (rank 0 writes it; every rank returns it)."""
    best, last = fitted["best"], fitted["last"]
    distributed.barrier()  # best.pt is rank 0's to write; every rank reads it next
    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    on_video = isinstance(data, VideoData)
    results = {**{k: v for k, v in best.items() if k != "epoch"}, "best_epoch": best["epoch"],
               "last": last, "model_selection": _selection_note(data.val.primary_metric),
               "predictions": {"best": BEST_PREDICTIONS, "last": LAST_PREDICTIONS},
               "params": count_params(model),
               **(video.video_results(model, data, next(model.parameters()).device, cfg.decode) if on_video
                  else {"GFLOPs": count_gflops(model, tuple(input_size))}),
               "primary_metric": data.val.primary_metric, "input_size": input_size,
               "heatmap_size": heatmap_size, "flip_test": cfg.flip_test and not on_video,
               "data": data.name, "genotype": str(Path(cfg.genotype).resolve()),
               "checkpoint": str(run_dir / "best.pt")}
    if distributed.is_main():
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        clear_interrupted(run_dir)
    distributed.barrier()
    return results


def _criterion(cfg: DictConfig, model: nn.Module, data) -> nn.Module:
    """The configured loss, or for a network supervised at several outputs / sigmas (`supervision=`, else
    the network's own `heatmap_outputs()`) a `MultiHeatmapLoss`, with the data making a target per sigma."""
    base = instantiate(cfg.criterion)
    outputs = _supervision(cfg.supervision, model)
    if outputs is None:
        return base
    sigmas = distinct_sigmas(outputs)
    set_target_sigmas(data.train, sigmas)
    log.info("supervision of %d heatmap output(s): %s", len(outputs), "; ".join(
        f"sigma {o.sigma:.2f} x{o.weight:g}" + (f" OHKM top-{o.ohkm_topk}" if o.ohkm_topk else "") for o in outputs))
    return MultiHeatmapLoss(outputs, sigmas, use_target_weight=getattr(base, "use_target_weight", True))


def _supervision(given: Any, model: nn.Module) -> list[HeatmapOutput] | None:
    own = model.heatmap_outputs() if hasattr(model, "heatmap_outputs") else None
    if given is None:
        return own
    entries = OmegaConf.to_container(given) if not isinstance(given, list) else given
    expected = len(own) if own is not None else 1
    if len(entries) != expected:
        raise UserError(f"supervision= lists {len(entries)} output(s) but the network returns {expected}; "
                        "give one {sigma, weight, ohkm_topk} per output, or supervision=null for its own")
    outputs = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - {"sigma", "weight", "ohkm_topk"}
        if unknown or "sigma" not in entry:
            raise UserError(f"supervision[{i}] must be {{sigma, weight, ohkm_topk}} with a sigma; got {dict(entry)}")
        outputs.append(HeatmapOutput(float(entry["sigma"]), float(entry.get("weight", 1.0)),
                                     entry.get("ohkm_topk")))
    return outputs


def _load_pretrained(model: nn.Module, path: str, space: str) -> None:
    if not hasattr(model, "load_pretrained"):
        raise UserError(f"pretrained={path}: the {space} space's networks have no ImageNet backbone to "
                        "initialise; drop pretrained= (families with one: hrnet, simple_baseline, mspn)")
    report = model.load_pretrained(path)
    log.info("%s", describe(report, path))


def _learning_rate(cfg: DictConfig, processes: int) -> float:
    """optimizer.lr, or with lr_scaling=linear that lr x global batch / lr_base_batch."""
    if cfg.lr_scaling is None:
        return float(cfg.optimizer.lr)
    if cfg.lr_scaling != "linear":
        raise UserError(f"lr_scaling={cfg.lr_scaling!r} is not a rule; use linear or null")
    return float(cfg.optimizer.lr) * cfg.batch_size * processes / cfg.lr_base_batch


def parallel_net(model: nn.Module, world: distributed.World, device: torch.device, sync_bn: bool,
                 compile_net: bool) -> nn.Module:
    """The module that trains: `model` itself in one process, else wrapped in DistributedDataParallel
    (with SyncBatchNorm when asked: CUDA only), optionally torch.compile'd. `model` keeps the weights
    (checkpoints hold its state_dict, without DDP's or compile's prefixes)."""
    net: nn.Module = model
    if sync_bn:
        if device.type != "cuda":
            raise UserError("sync_bn=true needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); set sync_bn=false")
        if world.enabled:  # converted in place of model's modules so checkpoints keep their keys
            _convert_sync_bn(model)
    if world.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=True)
    if compile_net:
        net = torch.compile(net)
    return net


def _convert_sync_bn(model: nn.Module) -> None:
    for name, child in model.named_children():
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(child)
        if converted is not child:
            setattr(model, name, converted)
        elif not isinstance(child, nn.modules.batchnorm._BatchNorm):
            _convert_sync_bn(child)


def _selection_note(primary: str) -> str:
    return (f"best_epoch has the highest {primary} on the validation split these metrics are computed "
            "on (as HRNet and MMPose select), so the flat metrics are optimistic; 'last' holds the "
            "final epoch's metrics, without selection")


def _steps(loader_steps: int, cap: int | None) -> int:
    """Steps per epoch: one pass over the training loader, or `max_steps_per_epoch` when smaller."""
    return loader_steps if cap is None else max(1, min(loader_steps, cap))


@hydra.main(config_path="pkg://conf", config_name="retrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors(cfg):  # checks cfg first (nas.config.check_config)
        results = retrain(cfg)
    if not distributed.is_main():
        return
    primary = results["primary_metric"]
    extra = f"  AP50 {results['AP50']:.4f}" if primary == "AP" and "AP50" in results else ""
    after = ""
    if "latency_ms_per_frame" in results:  # video: online AP, and what a frame costs
        extra += (f" (online crops; {results['AP_gt_boxes']:.4f} with ground-truth crops)  "
                  f"{results['latency_ms_per_frame']:.2f} ms/frame on {results['latency_threads']} CPU thread, "
                  f"{results['latency_ms_per_frame_corrected']:.2f} drift-corrected")
        if "AP_no_fusion" in results:
            after = (f"\nwithout fusion (the same networks, light frames blind to the previous heatmaps): AP "
                     f"{results['AP_no_fusion']:.4f} (online crops; {results['AP_gt_boxes_no_fusion']:.4f} with "
                     f"ground-truth crops)")
    print(f"\n{primary} {results[primary]:.4f}{extra}  params {results['params'] / 1e6:.2f}M  "
          f"GFLOPs {results['GFLOPs']:.3f}{after}\nresults: {Path(results['checkpoint']).parent / 'results.json'}")


if __name__ == "__main__":
    sys.argv = positional_to_override(sys.argv, "genotype")
    main()
