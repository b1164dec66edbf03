"""python -m nas.study study=search_vs_random|evolution_vs_random|proxy_fidelity [overrides]

Launches the study's searches and retrains as Hydra multiruns of nas.search / nas.retrain inside
`run_dir` (so `launcher=[hydra/launcher=...]` sends them to a cluster), and writes report.md, its PNGs
and study.json there, refreshed as runs finish. `resume=true run_dir=<dir>` continues a killed study:
finished runs are reused, checkpointed ones resumed, the config must be the study's own.
"""
from __future__ import annotations

import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from nas.cli import user_errors
from nas.config import register
from nas.engine.runtime import log, prepare_run_dir, save_config
from nas.errors import UserError
from nas.study import report
from nas.study.runner import Launch
from nas.study.studies import STUDIES, dumps
from nas.utils.io import atomic_write_text

register()


def build(node: DictConfig):
    """The study object of the `study` config node (its keys are the class's keyword arguments)."""
    cls = get_class(node._target_)
    if cls not in STUDIES.values():
        raise UserError(f"study._target_={node._target_} is not a study; use one of "
                        + ", ".join(f"{c.__module__}.{c.__name__}" for c in STUDIES.values()))
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
    return cls(**kwargs)


def check_seeds(seeds: list) -> list[int]:
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise UserError(f"seeds must be a non-empty list of distinct non-negative integers, got {list(seeds)}")
    return list(seeds)


def run_study(cfg: DictConfig) -> Path:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    prepare_run_dir(run_dir, cfg.resume, checkpoint="config.yaml", config=cfg)  # refuses a changed config
    study, seeds = build(cfg.study), check_seeds(list(cfg.seeds))
    boot = OmegaConf.to_container(cfg.bootstrap, resolve=True)
    if set(boot) != {"level", "resamples", "seed"} or not 0 < boot["level"] < 1 or boot["resamples"] < 1:
        raise UserError(f"bootstrap must hold level in (0, 1), resamples >= 1 and seed, got {boot}")
    save_config(cfg, run_dir)
    started = time.time()
    log.info("study %s (%s): seeds %s, directory %s", study.name, study.kind, seeds, run_dir)

    def refresh(finished: bool = False) -> Path:
        table = study.table(run_dir, seeds)
        atomic_write_text(run_dir / "study.json", dumps(table))
        commands = (run_dir / "commands.txt").read_text().splitlines() if (run_dir / "commands.txt").is_file() else []
        return report.write(study, table, run_dir, commands, boot, time.time() - started, finished)

    launch = Launch(list(cfg.launcher), float(cfg.poll_s), on_poll=refresh, record=run_dir / "commands.txt")
    try:
        study.run(run_dir, seeds, launch)
    except BaseException:
        refresh()  # whatever finished stays readable
        raise
    return refresh(finished=True)


@hydra.main(config_path="pkg://conf", config_name="study", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors(cfg):  # checks cfg first (nas.config.check_config)
        path = run_study(cfg)
    print(f"\nreport written to {path}")


if __name__ == "__main__":
    main()
