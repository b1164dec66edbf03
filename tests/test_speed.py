"""Drift-corrected latency (estimators/speed.py): the probe's calibration file, the corrected figure on a fake
clock whose speed changes mid-measurement, and where the search and nas.profile use it."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from estimators import speed
from estimators.latency import measure_latency
from estimators.speed import ProbeTimer, SpeedProbe, machine_key


@pytest.fixture
def speed_path(tmp_path, monkeypatch):
    path = tmp_path / "speed.json"
    monkeypatch.setenv(speed.FILE_ENV, str(path))
    return path


def _keep(path, shape, probe_ms, threads=1):
    key = machine_key(torch.device("cpu"), threads, shape)
    path.write_text(json.dumps({key: {"probe_ms": probe_ms, "when": "earlier"}}))
    return key


class _Clock:
    """Stands in for time.perf_counter; `slow` is how many times slower the machine runs right now."""

    def __init__(self):
        self.now, self.slow = 0.0, 1.0


class _Takes(nn.Module):
    """A forward that takes `ms` on the fake clock at full speed, slowed by the clock's factor."""

    def __init__(self, clock: _Clock, ms: float, slow_down_after: int | None = None, factor: float = 1.0):
        super().__init__()
        self.clock, self.ms, self.calls = clock, ms, 0
        self.slow_down_after, self.factor = slow_down_after, factor

    def forward(self, x):
        self.calls += 1
        if self.slow_down_after is not None and self.calls > self.slow_down_after:
            self.clock.slow = self.factor  # from now on everything runs slower (the network and the probe)
        self.clock.now += self.ms * self.clock.slow / 1e3
        return x


def test_corrected_is_the_median_ratio_times_the_calibrated_probe(speed_path):
    _keep(speed_path, (1, 3, 8, 8), 1.5)
    timer = ProbeTimer((1, 3, 8, 8), "cpu", threads=1)
    assert timer.probe_ms == 1.5
    # ratios 2, 2, 3 -> median 2 -> 2 x 1.5 ms
    assert timer.corrected([2.0, 4.0, 6.0], [1.0, 2.0, 2.0]) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        timer.corrected([1.0, 2.0], [1.0])


def test_a_slow_spell_moves_the_raw_median_not_the_corrected_figure(speed_path, monkeypatch):
    """The network takes 6 ms and the probe 2 ms at full speed; after 3 of 10 timed runs the machine runs 1.8x
    slower. Raw median: 6 x 1.8 = 10.8 ms; corrected: ratio 3 x the probe's calibrated 2 ms = 6 ms."""
    clock = _Clock()
    monkeypatch.setattr("estimators.speed.time.perf_counter", lambda: clock.now)
    _keep(speed_path, (1, 3, 8, 8), 2.0)
    timer = ProbeTimer((1, 3, 8, 8), "cpu", threads=1)
    timer.probe = _Takes(clock, 2.0)
    net = _Takes(clock, 6.0, slow_down_after=3, factor=1.8)
    monkeypatch.setattr("estimators.latency.ProbeTimer", lambda *a, **k: timer)
    stats = measure_latency(net, (8, 8), "cpu", runs=10, warmup=0, threads=1, drift_correction=True)
    assert stats["median_ms"] == pytest.approx(10.8)
    assert stats["corrected_ms"] == pytest.approx(6.0)
    assert stats["probe"]["probe_ms"] == 2.0 and stats["probe"]["median_now_ms"] == pytest.approx(3.6)
    assert timer.probe.calls == 20  # two probe passes after each network pass, the second timed


def test_calibration_is_made_once_kept_and_reused(speed_path, monkeypatch):
    timer = ProbeTimer((1, 3, 16, 12), "cpu", threads=1, seconds=0.05)
    kept = json.loads(speed_path.read_text())
    assert list(kept) == [timer.key] and kept[timer.key]["probe_ms"] == pytest.approx(timer.probe_ms)
    assert kept[timer.key]["runs"] >= 20 and "16x12" in timer.key and "1 thread" in timer.key
    # another input is another entry, and the first is left as it was
    other = ProbeTimer((1, 3, 32, 24), "cpu", threads=1, seconds=0.05)
    kept = json.loads(speed_path.read_text())
    assert set(kept) == {timer.key, other.key} and kept[timer.key]["probe_ms"] == pytest.approx(timer.probe_ms)

    def must_not_run(*a, **k):
        raise AssertionError("calibrated again")
    monkeypatch.setattr(speed, "calibrate", must_not_run)
    assert ProbeTimer((1, 3, 16, 12), "cpu", threads=1).probe_ms == pytest.approx(timer.probe_ms)
    with pytest.raises(AssertionError, match="calibrated again"):
        ProbeTimer((1, 3, 16, 12), "cpu", threads=1, refresh=True)


def test_calibration_is_a_low_percentile_of_the_probe(monkeypatch):
    """Probe times 1..100 ms (one per pass): the 1st percentile by linear interpolation is 1.99 ms."""
    times = iter(range(1, 200))
    monkeypatch.setattr(speed, "time_once", lambda m, x: float(next(times)))
    # one reading sets the deadline (0 + 1 s), then one before each pass: 100 passes before it reads 10 s
    clock = iter([0.0] + [0.0] * 100 + [10.0] * 1000)
    monkeypatch.setattr("estimators.speed.time.perf_counter", lambda: next(clock))
    monkeypatch.setattr(speed, "_sync", lambda d: None)
    out = speed.calibrate(SpeedProbe(), torch.zeros(1, 3, 8, 8), seconds=1.0)
    # the 5 warm-up passes take 1..5; the timed ones 6..105
    assert out["runs"] == 100 and out["probe_ms"] == pytest.approx(6 + 0.99)


def test_an_unreadable_speed_file_is_recalibrated_with_a_warning(speed_path, caplog):
    speed_path.write_text("{not json")
    timer = ProbeTimer((1, 3, 8, 8), "cpu", threads=1, seconds=0.02)
    assert "unreadable speed calibration" in caplog.text
    assert json.loads(speed_path.read_text())[timer.key]["probe_ms"] == pytest.approx(timer.probe_ms)


def test_temporal_frame_latency_is_corrected_per_position(speed_path):
    import random
    from estimators.temporal_cost import frame_latency_ms
    from nas.spaces import build_space
    space = build_space("temporal", {"cycle_choices": [2]})
    net = space.build(space.sample(random.Random(0)))
    _keep(speed_path, (1, 3, 96, 72), 1.0)
    stats = frame_latency_ms(net, (96, 72), cycles=3, warmup=1, drift_correction=True)
    assert len(stats["corrected_per_position"]) == 3 and stats["probe"]["probe_ms"] == 1.0
    assert stats["corrected_per_frame"] == pytest.approx(sum(stats["corrected_per_position"]) / 3)
    assert "corrected_per_frame" not in frame_latency_ms(net, (96, 72), cycles=1, warmup=0)


def test_speed_tool_lists_and_calibrates(speed_path, capsys):
    from nas.tools.speed import main
    assert main([]) == 0 and "no calibration yet" in capsys.readouterr().out
    assert main(["--input", "16", "12", "--seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "16x12" in out and "calibrated speed" in out
    assert main([]) == 0 and "16x12" in capsys.readouterr().out
    speed_path.write_text("[")
    assert main([]) == 2 and "not valid JSON" in capsys.readouterr().err
    assert main(["--input", "16", "12", "--seconds", "0"]) == 2


def test_cli_is_installed_as_a_module():
    import subprocess
    out = subprocess.run([sys.executable, "-m", "nas.tools.speed", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "calibration" in out.stdout


def test_preemptions_are_counted_per_pass_and_flagged_above_the_threshold(monkeypatch):
    counts = iter([10, 25])
    monkeypatch.setattr(speed, "_involuntary_switches", lambda: next(counts))
    with speed.Preemptions() as preempted:
        pass
    assert preempted.count == 15 and preempted.per_pass(30) == pytest.approx(0.5)
    assert speed.busy_warning(None) is None and speed.busy_warning(speed.BUSY_PREEMPTIONS) is None
    assert "preempted 0.50 times per pass" in speed.busy_warning(0.5)


def test_profile_report_warns_when_the_timing_was_preempted():
    from nas.profile import report
    result = {"genotype": "g.json", "space": "plain_conv", "space_args": {}, "input_size": [8, 8], "params": 10,
              "GFLOPs": 0.001, "GFLOPs_summary_rule": 0.001, "activation_GB": 0.0,
              "latency": {"median_ms": 1.0, "mean_ms": 1.0, "p90_ms": 1.0, "runs": 3, "batch_size": 1,
                          "device": "cpu", "threads": 1, "preemptions_per_pass": 0.7}}
    assert "warning: the timing process was preempted 0.70 times per pass" in report(result)
    result["latency"]["preemptions_per_pass"] = 0.0
    assert "warning" not in report(result)
