"""The hand-designed families end to end: each published network retrains with the same command as a
searched one (one sweep, in one process), MSPN with its own multi-stage supervision."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import REPO_ROOT, module_cmd, run_env

# one published member per family, with its published parameter count (M) from the size table
MEMBERS = {"hrnet_w18_v2_coco_256x192": 3.7, "simple_baseline_r50_coco_256x192": 34.0,
           "lpn50_coco_256x192": 2.9, "mspn_2stage_coco_256x192": 56.80}


@pytest.mark.slow
def test_every_family_retrains_with_the_common_command(tmp_path):
    """Full-size networks at a 128x96 crop (1/32 is then 4x3, so every family's strides fit), one step each;
    the same -m sweep a user runs. MSPN's 2 stages x 4 units are supervised at their own sigmas with OHKM
    on each stage's last unit (log line), and every run evaluates its final heatmaps."""
    genotypes = ",".join(str(REPO_ROOT / "genotypes" / f"{name}.json") for name in sorted(MEMBERS))
    proc = subprocess.run(module_cmd("nas.retrain", "-m", f"genotype={genotypes}", "data.num_train=4",
                                     "data.num_val=2", "data.image_size=[128,128]", "data.max_people=1",
                                     "input_size=[128,96]", "heatmap_size=[32,24]", "num_workers=0", "epochs=1",
                                     "max_steps_per_epoch=1", "batch_size=2", "eval_batch_size=2",
                                     f"hydra.sweep.dir={tmp_path / 'sweep'}"),
                          env=run_env(tmp_path / "cache"), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for job, name in enumerate(sorted(MEMBERS)):
        results = json.loads((tmp_path / "sweep" / str(job) / "results.json").read_text())
        assert name in results["genotype"]
        assert results["params"] / 1e6 == pytest.approx(MEMBERS[name], rel=0.02)  # W18 v2: 3.757 (README truncates)
        assert "AP" in results
    log = proc.stdout + proc.stderr
    # MSPN: 2 stages x 4 units; kernels 15/11/9/7 then 11/9/7/5 -> sigmas 2.6, 2.0, 1.7, 1.4 | 2.0, 1.7, 1.4, 1.1
    assert "supervision of 8 heatmap output(s): sigma 2.60 x0.25; sigma 2.00 x0.25; sigma 1.70 x0.25; " \
           "sigma 1.40 x1 OHKM top-8; sigma 2.00 x0.25; sigma 1.70 x0.25; sigma 1.40 x0.25; sigma 1.10 x1 OHKM top-8" in log
    assert log.count("supervision of") == 1  # the single-output families keep the plain loss
