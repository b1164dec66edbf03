"""Hydra -m sweeps that fail honestly (nas/sweeps.py, nas/sweeps_submitit.py): a failing job does not stop the
others, the sweep exits non-zero naming it, and summary.csv/summary.md have one row per job; the same through
submitit's local executor; and the SLURM preset's sbatch script."""
from __future__ import annotations

import csv
import os
import pickle
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import TINY_DATA, TINY_SPACE, module_cmd, run_env

# A search of seconds: tiny data and supernet, one epoch of at most 2 steps, plain DARTS (no op timing).
SEARCH = [*TINY_DATA, *TINY_SPACE, "batch_size=4", "epochs=1", "max_steps_per_epoch=2", "strategy=darts",
          "strategy.latency_table=null"]
# TINY_SPACE has init_channels=4 and one reduction: cells of 4 and 8 channels. partial_channels=3 divides neither,
# so the search space refuses it when it is built (a user error, exit 2, before any training); 2 and null are fine.
BAD, GOOD = "search_space.partial_channels=3", ("search_space.partial_channels=null", "search_space.partial_channels=2")


def _sweep_env(cache: Path) -> dict[str, str]:
    """The test runs' environment, without SLURM's variables (a test inside a SLURM job must not requeue it)."""
    return {k: v for k, v in run_env(cache).items() if not k.startswith("SLURM_")}


def _run(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(module_cmd("nas.search", "-m", *SEARCH, *args), capture_output=True, text=True,
                          timeout=timeout, env=_sweep_env(tmp_path / "cache"), cwd=tmp_path)


def _summary(sweep_dir: Path) -> dict[int, dict[str, str]]:
    with (sweep_dir / "summary.csv").open() as handle:
        return {int(row["job"]): row for row in csv.DictReader(handle)}


# ---- fast: the pieces ---------------------------------------------------------------------------------------------

def test_a_user_error_exit_becomes_the_jobs_failure_and_a_stop_is_told_apart():
    from nas.cli import user_errors
    from nas.engine.preemption import Preempted
    from nas.errors import UserError
    from nas.sweeps import GuardedTask, JobExit

    def fails(cfg):
        with user_errors():
            raise UserError("epochs must be positive")

    def stopped(cfg):
        with user_errors():
            raise Preempted("SIGTERM: checkpoint written", 128 + signal.SIGTERM)

    def exits_cleanly(cfg):
        raise SystemExit(0)

    with pytest.raises(JobExit) as failure:
        GuardedTask(fails)(None)
    assert (failure.value.code, failure.value.message, failure.value.stopped) == \
        (2, "error: epochs must be positive", False)
    with pytest.raises(JobExit) as stop:
        GuardedTask(stopped)(None)
    assert (stop.value.code, stop.value.stopped) == (128 + signal.SIGTERM, True)
    assert GuardedTask(exits_cleanly)(None) is None


def test_summary_rows_and_the_failure_message(tmp_path):
    from nas.sweeps import JobRow, Summary, SweepFailed

    summary = Summary(tmp_path)
    shared = ["epochs=1"]
    summary.add(JobRow(0, [*shared, "seed=0"], status="ok", exit_code=0, run_dir=str(tmp_path / "0"),
                       genotype=str(tmp_path / "0" / "genotype.json")))
    summary.add(JobRow(1, [*shared, "seed=1"], status="failed", exit_code=2, error="error: no | pipe",
                       run_dir=str(tmp_path / "1")))
    summary.add(JobRow(2, [*shared, "seed=2"], status="ok", exit_code=0, metric="AP", value=0.5))
    summary.write()
    rows = _summary(tmp_path)
    assert [rows[k]["status"] for k in (0, 1, 2)] == ["ok", "failed", "ok"]
    assert rows[1]["overrides"] == "seed=1" and rows[1]["all_overrides"] == "epochs=1 seed=1"
    assert rows[1]["error"] == "error: no | pipe" and rows[1]["exit_code"] == "2"
    markdown = (tmp_path / "summary.md").read_text()
    assert "Every job also has: `epochs=1`" in markdown and "AP 0.5000" in markdown
    assert "failed (exit 2): error: no \\| pipe" in markdown  # a | would split the table's cell
    with pytest.raises(SweepFailed, match=r"1 of 3 jobs failed: #1 \(seed=1\): failed, exit 2: error: no \| pipe"):
        summary.conclude()
    summary.rows[1].status = "ok"
    summary.conclude()  # nothing failed: no error


def test_the_genotype_path_may_come_before_or_after_the_multirun_flag():
    from nas.cli import positional_to_override
    expected = ["prog", "-m", "genotype='g.json'", "seed=0,1"]
    assert positional_to_override(["prog", "g.json", "-m", "seed=0,1"], "genotype") == expected
    assert positional_to_override(["prog", "-m", "g.json", "seed=0,1"], "genotype") == expected
    assert positional_to_override(["prog", "g.json", "seed=0"], "genotype") == ["prog", "genotype='g.json'", "seed=0"]
    assert positional_to_override(["prog", "-m", "genotype=a,b"], "genotype") == ["prog", "-m", "genotype=a,b"]


def test_slurm_preset_asks_sbatch_for_one_task_per_gpu_and_requeue(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from hydra_plugins.posenas_launchers.launchers import SlurmLauncher
    from nas.config import register

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit's SLURM executor wants one on PATH
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    register()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("search", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                           "hydra.launcher.gpus_per_node=4", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                      return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_") == "hydra_plugins.posenas_launchers.launchers.SlurmLauncher"
    executor = SlurmLauncher(**params)._executor()
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    for flag in ("--partition=gpu", "--gpus-per-node=4", "--ntasks-per-node=4", "--cpus-per-task=8", "--time=240",
                 "--requeue", "--signal=USR2@120", "--nodes=1"):
        assert f"#SBATCH {flag}\n" in script, flag
    assert executor._executor.max_num_timeout == 3


# ---- slow: real sweeps --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_others(tmp_path):
    # the sweep, failing job first, plus one more after it: jobs 0 (3: fails), 1 (null), 2 (2)
    proc = _run(tmp_path, "search_space.partial_channels=3,null,2")
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "1 of 3 jobs failed: #0 (search_space.partial_channels=3)" in proc.stderr
    [sweep_dir] = list((tmp_path / "runs" / "multirun").iterdir())  # the default hydra.sweep.dir, under the cwd
    rows = _summary(sweep_dir)
    assert sorted(rows) == [0, 1, 2]
    assert (rows[0]["status"], rows[0]["exit_code"], rows[0]["overrides"]) == ("failed", "2", BAD)
    assert "partial_channels=3" in rows[0]["error"] and rows[0]["genotype"] == ""
    for job, override in zip((1, 2), GOOD):
        run_dir = sweep_dir / str(job)  # hydra.sweep.subdir: the job's number
        assert (rows[job]["status"], rows[job]["overrides"]) == ("ok", override)
        assert rows[job]["run_dir"] == str(run_dir.resolve())
        assert rows[job]["genotype"] == str(run_dir.resolve() / "genotype.json")
        assert (run_dir / "genotype.json").is_file()
    assert rows[0]["run_dir"] == str((sweep_dir / "0").resolve()) and not (sweep_dir / "0" / "genotype.json").exists()
    assert "| 0 | failed (exit 2): error: bad config" in (sweep_dir / "summary.md").read_text()


@pytest.mark.slow
def test_a_failing_job_through_submitit_local(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = _run(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                f"hydra.sweep.dir={sweep_dir}", "search_space.partial_channels=3,null")
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "1 of 2 jobs failed: #0 (search_space.partial_channels=3)" in proc.stderr
    rows = _summary(sweep_dir)
    assert (rows[0]["status"], rows[0]["exit_code"]) == ("failed", "2") and "partial_channels=3" in rows[0]["error"]
    assert (rows[1]["status"], rows[1]["genotype"]) == ("ok", str(sweep_dir / "1" / "genotype.json"))
    assert (sweep_dir / "1" / "genotype.json").is_file()
    # the job itself ended in error, not with a FAILED JobReturn as its result (what SLURM would call COMPLETED,
    # Hydra #1928): submitit stored an error outcome for job 0 and a success for job 1
    outcomes = {}
    for result in (sweep_dir / ".submitit").glob("*/*_result.pkl"):  # .submitit/<job id>/<job id>_0_result.pkl
        with result.open("rb") as handle:
            outcomes[result.parent.name] = pickle.load(handle)[0]
    assert outcomes == {rows[0]["job_id"]: "error", rows[1]["job_id"]: "success"}


@pytest.mark.slow
def test_a_stop_signal_stops_a_local_sweep_with_its_exit(tmp_path):
    # job 0's first loss call sends SIGTERM: it checkpoints and exits 128 + 15, which stops the sweep (the signal
    # was for this process); job 1 never starts
    proc = _run(tmp_path, "epochs=2", "criterion._target_=tests.helpers.TermAtFirstLoss", "seed=0,1",
                f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    rows = _summary(tmp_path / "sweep")
    assert (rows[0]["status"], rows[0]["exit_code"]) == ("stopped", str(128 + signal.SIGTERM))
    assert rows[1]["status"] == "not run" and not (tmp_path / "sweep" / "1").exists()
    assert rows[1]["run_dir"] == str(tmp_path / "sweep" / "1")  # where it would have run
    assert (tmp_path / "sweep" / "0" / "last.pt").is_file()  # the stop's checkpoint
