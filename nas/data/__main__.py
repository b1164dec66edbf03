"""python -m nas.data [data=coco data.root=/path] [split=val|train|both] [overrides]  ->  dataset inspector

Without split=, inspects every split whose annotations exist and names the missing ones. Loads every
sample of the chosen split(s) through the real pipeline, with no model, and prints the
counts, the round-trip score of the ground truth (encoded to targets, decoded with the quarter offset
and with DARK) and the loading speed; writes summary.json and a few PNGs to out_dir. On video data
(data=posetrack) it counts videos, frames, labelled frames, tracks, instances and clips, and draws clips.
Logic in nas/data/inspect.py.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from nas.cli import user_errors
from nas.inspect_config import register

register()


@hydra.main(config_path="pkg://conf", config_name="inspect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from nas.data.inspect import inspect_data, format_summary
    with user_errors(cfg):  # checks cfg first (nas.config.check_config)
        summary = inspect_data(cfg)
    print(format_summary(summary))


if __name__ == "__main__":
    main()
