"""Honest sweeps through hydra-submitit-launcher: `hydra/launcher=slurm` (SLURM) and `hydra/launcher=submitit_local`
(the same machinery as subprocesses of this machine, to try a SLURM sweep without a cluster).

What changes against the plugin's launchers (see nas/sweeps.py for the whole story):
- In the job (`__call__`), a failed job leaves its task with an error, so submitit stores an error outcome and
  SLURM records FAILED (the plugin returns the FAILED JobReturn as a result and SLURM says COMPLETED, Hydra
  #1928). A job stopped on a signal (submitit's requeue handler exits -1, our checkpoint-and-stop 128 + n)
  leaves with that same exit and no outcome, so that submitit's requeue goes on.
- Rank 0 of each job writes `posenas_job.json` (status, exit code, one-line error, run dir) into the job's
  submitit folder when it starts and when it ends: the client reads why a job failed from there.
- In the client (`launch`), every job is waited for (the plugin raises at the first failed `results()`),
  summary.csv/md are rewritten as each finishes, and SweepFailed names every failed job at the end.

The executor set-up repeats hydra-submitit-launcher 1.2's `launch` (pinned in pyproject.toml), whose job list
is not reachable without its `[j.results()[0] for j in jobs]`.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf

from nas.sweeps import GuardedTask, JobExit, JobRow, Summary, one_line, planned_run_dir, warn_ignored_run_dir
from nas.utils.io import atomic_write_text

log = logging.getLogger(__name__)

JOB_RECORD = "posenas_job.json"  # in the job's submitit folder (<sweep dir>/.submitit/<job id>/)


class HonestSubmititLauncher(BaseSubmititLauncher):
    """hydra-submitit-launcher's launcher, honest about failures (module docstring)."""

    poll_s: float = 10.0  # how often the client asks the scheduler which jobs ended
    report_state: bool = True  # the scheduler's state in the summary (submitit's local one says FINISHED for all)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.summary: Summary | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=GuardedTask(task_function), config=config)

    # ---- in the job (a SLURM task, or a subprocess for submitit_local) --------------------------------------
    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict[type, Singleton]) -> JobReturn:
        import submitit
        env = submitit.JobEnvironment()
        record = Path(env.paths.folder) / JOB_RECORD if env.global_rank == 0 else None
        row = JobRow(job_num, list(filter_overrides(sweep_overrides)), status="running", job_id=str(env.job_id))
        _write_record(record, row, restart=os.environ.get("SLURM_RESTART_COUNT"))
        try:
            ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        except BaseException as err:  # not the task's own failure (GuardedTask keeps those): Hydra's, a kill
            code = getattr(err, "code", 1)
            row.status, row.exit_code = "failed", code if isinstance(code, int) else 1
            row.error = f"{type(err).__name__}: {one_line(str(err))}"
            _write_record(record, row)
            raise
        row.record(ret)
        _write_record(record, row)
        if ret.status == JobStatus.COMPLETED:
            return ret
        err = ret._return_value
        if isinstance(err, JobExit) and err.stopped:
            raise SystemExit(err.code)  # no outcome written: a requeued job is not over
        print(f"posenas: job #{job_num} failed (exit {row.exit_code}): {row.error}", file=sys.stderr, flush=True)
        if isinstance(err, JobExit):  # a user error: its line is printed above; no traceback of the exit chain
            err.__cause__, err.__suppress_context__ = None, True
            err = err.with_traceback(None)
        raise err  # submitit stores the error outcome; the task exits 1, SLURM records FAILED

    # ---- in the client (the `python -m nas.search -m ...` process) -----------------------------------------
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        assert self.config is not None and self.hydra_context is not None
        num_jobs = len(job_overrides)
        assert num_jobs > 0
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        if self.summary is None:
            self.summary = Summary(sweep_dir)
        summary = self.summary
        warn_ignored_run_dir(job_overrides)

        job_params: list[Any] = []
        nums = [initial_job_idx + i for i in range(num_jobs)]
        for num, overrides in zip(nums, job_overrides):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            summary.add(JobRow(num, list(filter_overrides(overrides)), status="submitted",
                               run_dir=planned_run_dir(self.hydra_context, self.config, overrides, num)))
            job_params.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        by_id = {}
        for num, job in zip(nums, jobs):
            summary.rows[num].job_id = str(job.job_id)
            by_id[str(job.job_id)] = num
        summary.write()

        returns: dict[int, JobReturn] = {}
        try:
            for job in submitit.helpers.as_completed(jobs, poll_frequency=self.poll_s):
                num = by_id[str(job.job_id)]
                returns[num] = self._collect(job, summary.rows[num])
                summary.write()
        except BaseException:  # Ctrl-C in the client: the jobs go on (scancel them); the summary says what is known
            summary.write()
            raise
        summary.conclude()
        return [returns[num] for num in nums]

    def _collect(self, job: Any, row: JobRow) -> JobReturn:
        """The row of a job that ended, from its outcome and the record its rank 0 wrote."""
        record = _read_record(Path(job.paths.folder) / JOB_RECORD)
        if self.report_state:
            row.state = _state(job)
        try:
            ret = job.results()[0]
        except Exception as err:  # noqa: BLE001 - the job failed: its record (if any) says why
            row.status = record.get("status") if record.get("status") in ("failed", "stopped") else "failed"
            row.exit_code = record.get("exit_code")
            row.error = record.get("error") if row.status == record.get("status") and record.get("error") \
                else one_line(str(err))
            row.run_dir = record.get("run_dir") or row.run_dir
            log.error("job #%d %s (exit %s): %s", row.job, row.status, row.exit_code, row.error)
            return JobReturn(overrides=row.overrides, status=JobStatus.FAILED, _return_value=err)
        row.record(ret)  # a COMPLETED JobReturn: our __call__ raises for every failure
        return ret

    def _executor(self) -> Any:
        """submitit's executor with this launcher's parameters, as hydra-submitit-launcher 1.2 builds it."""
        import submitit
        params = self.params
        init_params = {"folder": params["submitit_folder"]}
        specific_init_keys = {"max_num_timeout"}
        init_params.update(**{f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x in specific_init_keys})
        init_keys = specific_init_keys | {"submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        # submitit's AutoExecutor does not forward the local executor's signal_delay_s: set on that executor itself
        direct = {"signal_delay_s"} if self._EXECUTOR == "local" else set()
        executor.update_parameters(**{x if x in baseparams else f"{self._EXECUTOR}_{x}": y
                                      for x, y in params.items() if x not in init_keys | direct})
        for key in direct & set(params):
            executor._executor.update_parameters(**{key: params[key]})
        return executor


class SubmititLocalLauncher(HonestSubmititLauncher):
    _EXECUTOR = "local"
    poll_s = 1.0
    report_state = False


class SlurmLauncher(HonestSubmititLauncher):
    _EXECUTOR = "slurm"
    poll_s = 15.0


def _write_record(path: Path | None, row: JobRow, **extra: Any) -> None:
    if path is None:
        return
    data = {"job": row.job, "status": row.status, "exit_code": row.exit_code, "error": row.error,
            "run_dir": row.run_dir, "job_id": row.job_id, **extra}
    try:
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    except OSError as err:  # the record only labels the summary; the job's own outcome must not depend on it
        log.warning("could not write %s: %s", path, err)


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _state(job: Any) -> str:
    """The scheduler's final word on the job (SLURM: COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY, ...)."""
    try:
        return str(job.state)
    except Exception:  # noqa: BLE001 - only a label
        return ""
