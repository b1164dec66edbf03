"""python -m nas.profile as a user runs it: a real process, numbers checked against hand counts."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from estimators.complexity import count_params
from estimators.latency import MeasuredLatency, measure_latency
from nas.genotype import load
from nas.spaces import resolve
from tests.helpers import REPO_ROOT, module_cmd, run_env

pytestmark = pytest.mark.slow
PLAIN = REPO_ROOT / "genotypes" / "weak_plain_conv.json"
DARTS = REPO_ROOT / "genotypes" / "darts_cells_synthetic_seed0.json"


def _run(cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(module_cmd(module, *args), capture_output=True, text=True, timeout=300,
                          env=run_env(cwd / ".cache"), cwd=cwd)


def plain_conv_counts(stem: int, widths: list[int], keypoints: int, h: int, w: int) -> tuple[int, int]:
    """(parameters, conv multiply-adds) of plain_conv by hand: two stride-2 3x3 stem convs, then a
    3x3 conv per width, each bias-free and followed by BatchNorm (weight + bias), then a 1x1 conv
    with bias to the heatmaps. Multiply-adds: c_in * c_out * k * k per output pixel."""
    chans = [3, stem, stem, *widths]
    params = sum(9 * a * b + 2 * b for a, b in zip(chans, chans[1:])) + widths[-1] * keypoints + keypoints
    sizes = [(h // 2) * (w // 2), (h // 4) * (w // 4)] + [(h // 4) * (w // 4)] * len(widths)
    macs = sum(9 * a * b * s for a, b, s in zip(chans, chans[1:], sizes)) + widths[-1] * keypoints * sizes[-1]
    return params, macs


def test_plain_conv_profile_matches_a_hand_count(tmp_path):
    g = json.loads(PLAIN.read_text())
    params, macs = plain_conv_counts(g["space_args"]["stem_channels"], g["genotype"]["widths"],
                                     g["space_args"]["num_keypoints"], *g["input_size"])
    proc = _run(tmp_path, "nas.profile", str(PLAIN), "runs=3", "warmup=1", "device=cpu", "threads=1",
                f"out={tmp_path / 'profile.json'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "profile.json").read_text())
    assert result["params"] == params
    # thop adds BatchNorm's element-wise work to the convs' multiply-adds: a few percent here.
    assert macs / 1e9 <= result["GFLOPs"] <= 1.05 * macs / 1e9
    # the HRNet code's rule: the convs' multiply-adds alone, in units of 2**30
    assert result["GFLOPs_summary_rule"] == pytest.approx(macs / 2 ** 30, rel=1e-9)
    assert result["input_size"] == g["input_size"]
    assert result["latency"]["median_ms"] > 0 and result["latency"]["runs"] == 3
    assert f"{params / 1e6:.2f}M" in proc.stdout and "latency" in proc.stdout
    # also at the calibrated speed, against the tests' own speed file (tests/conftest.py), never ~/.cache
    assert result["latency"]["corrected_ms"] > 0 and "drift-corrected latency" in proc.stdout
    assert result["latency"]["probe"]["file"] == os.environ["POSENAS_SPEED_FILE"]
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != ".cache")
    assert leftovers == ["profile.json"], leftovers  # no outputs/, no .hydra/, no log file


def test_preset_composes_for_profile_and_retrain(tmp_path):
    proc = _run(tmp_path, "nas.profile", str(DARTS), "+preset=posenas_l18_c48", "latency=false",
                f"out={tmp_path / 'profile.json'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "profile.json").read_text())
    assert result["input_size"] == [384, 288] and "latency" not in result
    assert result["space_args"]["layers"] == 18 and result["space_args"]["init_channels"] == 48
    genotype = load(DARTS)
    own = count_params(resolve(genotype).build(genotype))
    assert result["params"] > 4 * own  # 18 layers of C=48 against the genotype's 4 layers of C=12
    job = _run(REPO_ROOT, "nas.retrain", str(DARTS), "+preset=posenas_l18_c48", "--cfg", "job")
    assert job.returncode == 0, job.stderr[-3000:]
    cfg = yaml.safe_load(job.stdout)
    assert cfg["space_args"] == {"layers": 18, "init_channels": 48}
    assert cfg["input_size"] == [384, 288] and cfg["heatmap_size"] == [96, 72]


@pytest.mark.parametrize("override", ["input_size=[0,64]", "runs=0", "device=cuda:99x"])
def test_bad_values_are_one_line_errors(tmp_path, override):
    proc = _run(tmp_path, "nas.profile", str(PLAIN), override)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


class _FakeClock:
    """Stands in for time.perf_counter: only the model moves it, by a known step per forward."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Ticking(nn.Module):
    """A model whose forward 'takes' `ms` on the fake clock, call i taking (i + 1) x `ms`."""

    def __init__(self, clock: _FakeClock, ms: float):
        super().__init__()
        self.clock, self.ms, self.calls = clock, ms, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert not self.training and torch.is_inference_mode_enabled()
        self.clock.now += self.calls * self.ms / 1e3
        return x


def test_measure_latency_times_each_forward_after_warmup_and_restores_state(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr("estimators.latency.time.perf_counter", clock)
    model = _Ticking(clock, 10.0).train()
    before = torch.get_num_threads()
    stats = measure_latency(model, (8, 8), "cpu", runs=4, warmup=2, threads=before + 1)
    # calls 3..6 are timed: 30, 40, 50, 60 ms
    assert model.calls == 6 and model.training and torch.get_num_threads() == before
    assert stats["median_ms"] == pytest.approx(45.0) and stats["mean_ms"] == pytest.approx(45.0)
    assert stats["p90_ms"] == pytest.approx(57.0)  # linear interpolation between 50 and 60
    assert MeasuredLatency((8, 8), runs=1, warmup=0)(_Ticking(clock, 7.0))["latency_ms"] == pytest.approx(7.0)


@pytest.mark.gpu
def test_cuda_latency_is_measured_on_the_gpu():
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))
    stats = measure_latency(model, (256, 192), "cuda", runs=5, warmup=2)
    assert stats["device"].startswith("cuda") and next(model.parameters()).is_cuda
    assert 0 < stats["median_ms"] <= stats["p90_ms"]


def test_zoo_table_row_matches_the_hand_count(tmp_path):
    """nas.tools.zoo_table's row for the plain baseline: the hand-counted params and the convs'
    multiply-adds / 2**30 in the HRNet-rule column; the table goes to --out too."""
    from nas.tools.zoo_table import main
    g = json.loads(PLAIN.read_text())
    params, macs = plain_conv_counts(g["space_args"]["stem_channels"], g["genotype"]["widths"],
                                     g["space_args"]["num_keypoints"], *g["input_size"])
    main(["--glob", PLAIN.name, "--runs", "1", "--out", str(tmp_path / "zoo.md")])
    row = [line for line in (tmp_path / "zoo.md").read_text().splitlines() if line.startswith(f"| {PLAIN.stem} ")]
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[1] == "plain_conv" and cells[3] == f"{params / 1e6:.2f}"
    assert cells[5] == f"{macs / 2 ** 30:.3f}"
