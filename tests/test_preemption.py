"""Preemption: the signal a cluster sends before it stops a job, delivered to real runs mid-epoch.

A run is started, the test waits until its first epoch's checkpoint exists (so the signal lands in the
second epoch, which is long), sends the signal, and checks: the process stops with 128 + the signal's
number, the checkpoint is one inside the epoch, `interrupted.json` says so; the same command run again,
without resume=true, continues and ends with exactly what an uninterrupted run gives.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_DATA, TINY_SPACE, module_cmd, run_env

pytestmark = pytest.mark.slow

# 120 images: about 40 steps of batch 2 an epoch (4 s here), so the signal lands well inside the second epoch
SEARCH = [*TINY_DATA, *TINY_SPACE, "data.num_train=120", "batch_size=2", "epochs=2", "max_steps_per_epoch=null",
          "strategy=darts", "strategy.warmup_epochs=0"]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until `path` exists (the first epoch's checkpoint); polled, not slept on."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _interrupt(cmd: list[str], env: dict, cwd: Path, run_dir: Path, signum: int) -> dict:
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run_dir / "last.pt", proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "checkpoint written at epoch 2" in err  # one line saying where, and how to continue
    state = torch.load(run_dir / "last.pt", weights_only=True)
    marker = json.loads((run_dir / "interrupted.json").read_text())
    assert marker["signal"] == signal.Signals(signum).name
    return state


@pytest.fixture(scope="module")
def whole_search(tmp_path_factory) -> Path:
    """The uninterrupted search every interrupted one must reproduce (its run dir)."""
    root = tmp_path_factory.mktemp("whole")
    proc = subprocess.run(module_cmd("nas.search", *SEARCH, f"run_dir={root / 'run'}"), env=run_env(root / "cache"),
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_search_stopped_mid_epoch_continues_to_the_uninterrupted_genotype(tmp_path, signum, whole_search):
    env = run_env(tmp_path / "cache")
    cmd = module_cmd("nas.search", *SEARCH, f"run_dir={tmp_path / 'cut'}")
    state = _interrupt(cmd, env, tmp_path, tmp_path / "cut", signum)
    assert state["epoch"] == 0 and state["partial"]["epoch"] == 1 and state["partial"]["step"] > 0  # inside epoch 2
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)  # no resume=true
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing it from its checkpoint" in again.stdout + again.stderr
    assert not (tmp_path / "cut" / "interrupted.json").exists()  # finished: nothing left to continue
    a = json.loads((whole_search / "genotype.json").read_text())["genotype"]
    b = json.loads((tmp_path / "cut" / "genotype.json").read_text())["genotype"]
    assert a == b
    alphas = [torch.load(d / "last.pt", weights_only=True)["model"] for d in (whole_search, tmp_path / "cut")]
    for key in alphas[0]:
        if key.startswith("alphas"):
            assert torch.equal(alphas[0][key], alphas[1][key]), key  # the same batches, in the same order
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]


def test_retrain_stopped_mid_epoch_continues_to_the_uninterrupted_metrics(tmp_path):
    env = run_env(tmp_path / "cache")
    genotype = Path(__file__).resolve().parents[1] / "genotypes" / "weak_plain_conv.json"
    args = [str(genotype), *TINY_DATA, "data.num_train=60", "epochs=2", "batch_size=2", "eval_every=1"]
    whole = subprocess.run(module_cmd("nas.retrain", *args, f"run_dir={tmp_path / 'whole'}"), env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    cmd = module_cmd("nas.retrain", *args, f"run_dir={tmp_path / 'cut'}")
    state = _interrupt(cmd, env, tmp_path, tmp_path / "cut", signal.SIGUSR2)
    assert state["epoch"] == 0 and state["partial"]["step"] > 0
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert (a["AP"], a["AR"], a["best_epoch"]) == (b["AP"], b["AR"], b["best_epoch"])
    losses = [[json.loads(line)["loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("whole", "cut")]
    assert losses[0] == losses[1]  # the resumed epoch's mean loss includes the steps before the signal
    weights = [torch.load(tmp_path / d / "last.pt", weights_only=True)["model"] for d in ("whole", "cut")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_periodic_checkpoint_is_written_inside_the_epoch(tmp_path):
    """checkpoint_every_min=0.0001 (6 ms): after the first step a checkpoint inside the epoch is due."""
    env = run_env(tmp_path / "cache")
    genotype = Path(__file__).resolve().parents[1] / "genotypes" / "weak_plain_conv.json"
    proc = subprocess.run(module_cmd("nas.retrain", str(genotype), *TINY_DATA, "epochs=1", "batch_size=2",
                                     "eval_every=0", "checkpoint_every_min=0.0001", f"run_dir={tmp_path / 'r'}"),
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint at epoch 1, step 1/" in proc.stdout and "(periodic)" in proc.stdout



def test_a_time_limit_under_submitit_local_requeues_and_continues_to_the_uninterrupted_genotype(tmp_path,
                                                                                                 whole_search):
    """hydra/launcher=submitit_local with a 1-minute limit and USR2 30 s before it: submitit signals the
    job 30 s after each start. POSENAS_HOLD_AT_STEP=3 makes the fresh start wait at its third step until
    that signal (so it lands mid-epoch however fast the machine is); the job checkpoints, submitit requeues
    it, and the restarted job (not held: it continues from its checkpoint) finishes the search well inside
    its 30 s. The sweep ends ok with the uninterrupted search's genotype."""
    env = {k: v for k, v in run_env(tmp_path / "cache").items() if not k.startswith("SLURM_")}
    env["POSENAS_HOLD_AT_STEP"] = "3"
    sweep = subprocess.run(module_cmd("nas.search", "-m", *SEARCH, "hydra/launcher=submitit_local",
                                      "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=30",
                                      "hydra.launcher.max_num_timeout=4",
                                      f"hydra.sweep.dir={tmp_path / 'sweep'}"),
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=480)
    assert sweep.returncode == 0, (sweep.stdout + sweep.stderr)[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "sweep").rglob("*_log.*"))
    assert "holding at this step" in logs and "USR2 received" in logs  # held, then signalled by the time limit
    assert "continuing it from its checkpoint" in logs  # requeued and continued
    a = json.loads((whole_search / "genotype.json").read_text())["genotype"]
    b = json.loads((tmp_path / "sweep" / "0" / "genotype.json").read_text())["genotype"]
    assert a == b


def test_a_malformed_hold_step_is_refused_in_one_line(tmp_path):
    env = {**run_env(tmp_path / "cache"), "POSENAS_HOLD_AT_STEP": "three"}
    proc = subprocess.run(module_cmd("nas.search", *SEARCH, f"run_dir={tmp_path / 'r'}"), env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "POSENAS_HOLD_AT_STEP='three' is not a step number" in proc.stderr
    assert "Traceback" not in proc.stderr
