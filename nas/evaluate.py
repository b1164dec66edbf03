"""python -m nas.evaluate CHECKPOINT.pt [hydra overrides]  ->  the metrics of a retrained network

The metric is the val dataset's own (`data.val.evaluate`): COCO OKS AP/AR, or PCKh with data=mpii.

The checkpoint is a retrain's best.pt: it carries the genotype, so the network is rebuilt through
its search space (resolved by name, as for retrain) and evaluated with flip test on the val split.
With data=coco, `data.use_gt_bbox=false` evaluates on person-detector boxes, and `data.nms` (default
oks, threshold `data.nms_threshold`) removes the duplicate poses of boxes that found the same person.
"""
from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from nas.budget import check_budget
from nas.cli import positional_to_override, user_errors
from nas.config import register
from nas.data.build_video import refuse_clips
from nas.engine.checkpoint import load_checkpoint
from nas.engine.runtime import check_decoder, configure_threads, make_loader, pick_device
from nas.errors import UserError
from nas.genotype import Genotype
from nas.pose.predict import predict_coco
from nas.spaces import resolve
from nas.utils.io import atomic_write_text

register()


def evaluate(cfg: DictConfig) -> dict[str, float]:
    path = Path(cfg.checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (pass a retrain run's best.pt)")
    check_decoder(cfg.decode)
    state = load_checkpoint(path)
    if "genotype" not in state:
        raise UserError(f"{path} holds no genotype; pass the best.pt written by python -m nas.retrain")
    genotype = Genotype.from_dict(state["genotype"])
    space = resolve(genotype)
    check_budget(lambda: space.build(genotype), state["input_size"], cfg.max_params_m, cfg.max_activation_gb)
    model = space.build(genotype)
    model.load_state_dict(state["model"])
    configure_threads(cfg.threads)
    device = pick_device(cfg.device)
    data = _val_data(cfg.data, input_size=state["input_size"], heatmap_size=state["heatmap_size"])
    refuse_clips(data, "evaluate")
    loader = make_loader(data.val, cfg.eval_batch_size, False, cfg.num_workers)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else path.parent
    preds = predict_coco(model.to(device), loader, device, data.flip_pairs, flip=cfg.flip_test,
                         nms=data.nms, nms_threshold=data.nms_threshold,
                         decode=cfg.decode, sigma=data.val.sigma)
    scores = data.val.evaluate(preds)  # the dataset's own metric: AP for COCO-style data, PCKh for MPII
    out_dir.mkdir(parents=True, exist_ok=True)  # eval_*: retrain's *_predictions.json stay
    atomic_write_text(out_dir / "eval_predictions.json", json.dumps(preds) + "\n")
    atomic_write_text(out_dir / "eval_metrics.json", json.dumps(scores, indent=2) + "\n")
    return scores


def _val_data(data_cfg: DictConfig, **sizes) -> Any:
    """The dataset with only its val split built, where the factory can (COCO-style data), so a
    val-only download (no training annotations) can be evaluated."""
    make = instantiate(data_cfg, _partial_=True, **sizes)
    return make(splits=["val"]) if "splits" in inspect.signature(make.func).parameters else make()


@hydra.main(config_path="pkg://conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors(cfg):  # checks cfg first (nas.config.check_config)
        scores = evaluate(cfg)
    print("  ".join(f"{k} {v:.4f}" for k, v in scores.items()))  # the primary metric (AP, PCKh) first


if __name__ == "__main__":
    sys.argv = positional_to_override(sys.argv, "checkpoint")
    main()
