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

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from estimators.complexity import count_gflops, count_params
from nas.budget import check_budget
from nas.cli import positional_to_override, user_errors
from nas.config import register
from nas.data.bad_images import BadImageMonitor
from nas.engine.checkpoint import load_checkpoint
from nas.engine.runtime import (check_decoder, configure_threads, log, make_loader, pick_device, prepare_run_dir,
                                save_config, seed_everything, to_memory_format)
from nas.engine.train_loop import BEST_PREDICTIONS, LAST_PREDICTIONS, Trainer
from nas.errors import UserError
from nas.genotype import load
from nas.pose.predict import predict_coco
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
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    resume_from = prepare_run_dir(run_dir, cfg.resume, config=cfg)  # refuses a changed config
    configure_threads(cfg.threads)
    device = pick_device(cfg.device)
    input_size = list(cfg.input_size or genotype.input_size)
    heatmap_size = list(cfg.heatmap_size or genotype.heatmap_size)
    data = instantiate(cfg.data, input_size=input_size, heatmap_size=heatmap_size)
    seed_everything(cfg.seed)  # after the data: a first-use generation must not shift the RNG
    model = to_memory_format(space.build(genotype).to(device), cfg.channels_last)
    if space.args.get("num_keypoints", data.num_keypoints) != data.num_keypoints:
        raise UserError(f"the genotype's network predicts {space.args['num_keypoints']} keypoints but "
                        f"data={data.name} has {data.num_keypoints}")
    train_loader = make_loader(data.train, cfg.batch_size, True, cfg.num_workers, drop_last=True)
    val_loader = make_loader(data.val, cfg.eval_batch_size, False, cfg.num_workers)
    trainer = Trainer(model, instantiate(cfg.criterion), instantiate(cfg.optimizer)(model.parameters()),
                      cfg.epochs, _steps(len(train_loader), cfg.max_steps_per_epoch), device, cfg.lr_min, cfg.grad_clip,
                      best_extra={"genotype": {**genotype.to_dict(), "space_args": space_args},
                                  "input_size": input_size, "heatmap_size": heatmap_size},
                      primary_metric=data.val.primary_metric,
                      bad_images=BadImageMonitor(len(data.train), data.max_bad_fraction))
    save_config(cfg, run_dir)
    log.info("retrain %s (%s) on %s: %d instances, %d epochs, input %s, device %s, run dir %s",
             cfg.genotype, genotype.space, data.name, len(data.train), cfg.epochs, input_size, device, run_dir)

    def evaluate(net):
        preds = predict_coco(net, val_loader, device, data.flip_pairs, flip=cfg.flip_test,
                             nms=data.nms, nms_threshold=data.nms_threshold,
                             decode=cfg.decode, sigma=data.val.sigma)
        return data.val.evaluate(preds), preds  # the trainer writes the predictions files

    fitted = trainer.fit(train_loader, evaluate, cfg.eval_every, run_dir, resume_from)
    best, last = fitted["best"], fitted["last"]
    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    results = {**{k: v for k, v in best.items() if k != "epoch"}, "best_epoch": best["epoch"],
               "last": last, "model_selection": _selection_note(data.val.primary_metric),
               "predictions": {"best": BEST_PREDICTIONS, "last": LAST_PREDICTIONS},
               "params": count_params(model), "GFLOPs": count_gflops(model, tuple(input_size)),
               "primary_metric": data.val.primary_metric, "input_size": input_size,
               "heatmap_size": heatmap_size, "flip_test": cfg.flip_test,
               "data": data.name, "genotype": str(Path(cfg.genotype).resolve()),
               "checkpoint": str(run_dir / "best.pt")}
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results


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
    primary = results["primary_metric"]
    extra = f"  AP50 {results['AP50']:.4f}" if primary == "AP" and "AP50" in results else ""
    print(f"\n{primary} {results[primary]:.4f}{extra}  params {results['params'] / 1e6:.2f}M  "
          f"GFLOPs {results['GFLOPs']:.3f}\nresults: {Path(results['checkpoint']).parent / 'results.json'}")


if __name__ == "__main__":
    sys.argv = positional_to_override(sys.argv, "genotype")
    main()
