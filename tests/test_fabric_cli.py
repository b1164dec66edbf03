"""The fabric space searched from the command line by every kind of strategy, and its genotype retrained."""
from __future__ import annotations

import json
import subprocess

import pytest

from nas.genotype import load
from nas.spaces import resolve
from tests.helpers import TINY_DATA, module_cmd, run_env

pytestmark = pytest.mark.slow

FABRIC = ["search_space=fabric", "search_space.depth=4", "search_space.cut=2", "search_space.base_width=8",
          "search_space.backbone_width=8", "epochs=1",
          "max_steps_per_epoch=2", "batch_size=4", "score_images=4"]
STRATEGIES = {
    "darts": ["strategy=darts", "strategy.warmup_epochs=0"],
    "darts_second_order": ["strategy=darts_second_order", "strategy.warmup_epochs=0"],
    "darts_one_level": ["strategy=darts_one_level", "strategy.warmup_epochs=0"],
    "random": ["strategy=random", "strategy.num_samples=2", "strategy.steps_per_candidate=2"],
    "random_weight_sharing": ["strategy=random_weight_sharing", "strategy.num_samples=2",
                              "strategy.supernet_steps=2"],
    "pnfs_partial_channels": ["strategy=pnfs", "search_space.partial_channels=2"],
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_fabric_search_writes_a_genotype_that_builds(tmp_path, strategy):
    env, run = run_env(tmp_path / "cache"), tmp_path / "s"
    proc = subprocess.run(module_cmd("nas.search", *TINY_DATA, *FABRIC, *STRATEGIES[strategy], f"run_dir={run}"),
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    genotype = load(run / "genotype.json")
    assert genotype.space == "fabric" and len(genotype.genotype["parts"]) == 3  # coco_3
    resolve(genotype).build(genotype)  # validates: every kept cell reaches the head
    if strategy == "darts_one_level":
        retrain = subprocess.run(module_cmd("nas.retrain", str(run / "genotype.json"), *TINY_DATA, "epochs=1",
                                            "max_steps_per_epoch=2", "batch_size=4", f"run_dir={tmp_path / 'r'}"),
                                 env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert retrain.returncode == 0, retrain.stderr[-3000:]
        assert "AP" in json.loads((tmp_path / "r" / "results.json").read_text())
