"""Honest Hydra multiruns (`python -m nas.search -m ...`): a failing job does not stop its siblings, the sweep
exits non-zero naming the failed jobs, and <sweep_dir>/summary.csv + summary.md hold one row per job
(overrides, status with the one-line error, genotype path or primary metric, run directory).

Why launchers (`hydra/launcher=local`, the default of conf/search.yaml and conf/retrain.yaml, and the submitit
ones in nas/sweeps_submitit.py) rather than a Hydra callback: plain Hydra 1.3 stops a sweep in places no
callback is called from.
- Our entry points end a failed run with `sys.exit(2 or 3)` (nas.cli.user_errors). `run_job` catches only
  `Exception`, so the SystemExit leaves the basic launcher's loop: the next jobs never run, and
  `on_job_end` / `on_multirun_end` are never called.
- A job that raises is stored as FAILED, and the basic sweeper re-raises the first failed job's exception
  after the batch, so `on_multirun_end` is skipped and only that one job is named.
- The submitit launcher collects `[job.results()[0] for job in jobs]`, which raises at the first failed job:
  the later jobs' statuses are lost. Its SLURM task returns a FAILED JobReturn as an ordinary result, so the
  task exits 0 and SLURM records COMPLETED (Hydra #1928).
A launcher sees every job's outcome and decides what the sweep does next, so it is the one place to fix all
three; the summary is rewritten after every job, so even a killed sweep leaves it current. The failure is
raised once the launcher's jobs are done: with the default `hydra.sweeper.max_batch_size: null` that is the
whole sweep; with batches, a batch holding a failure is the last one (as with Hydra's own launchers).

`GuardedTask` turns a job's non-zero `sys.exit` into a `JobExit` exception, so that Hydra records the job as
FAILED (and calls `on_job_end`) instead of unwinding the sweep. An exit that means "stopped on a signal"
(128 + n from a checkpoint-and-stop, -1 from submitit's requeue handler) is different: it stops a local sweep
(the whole process was asked to stop), and in a SLURM task it leaves with the same exit so the requeue goes on.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import traceback
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import CompactHydraException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from nas.utils.io import atomic_write_text

log = logging.getLogger(__name__)

SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"
MAX_ERROR_CHARS = 400  # one line in a table cell; the job's own log holds the rest
NAMED_FAILURES = 5  # failed jobs named in the sweep's last line; the summary has them all


class JobExit(Exception):
    """A job ended with `sys.exit(code)`, code != 0: kept as that job's failure, not the sweep's end."""

    def __init__(self, code: int, message: str, stopped: bool = False):
        super().__init__(message)
        self.code, self.message, self.stopped = code, message, stopped


class SweepFailed(CompactHydraException):
    """Raised after the summary is written when any job failed: Hydra prints the message and exits 1."""


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """The first non-empty line of `text`, cut to `limit` characters."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _is_stop(code: int, context: BaseException | None) -> bool:
    """An exit that stops a run on a signal (after its checkpoint), as opposed to a failure."""
    try:
        from nas.engine.preemption import Preempted
    except ImportError:  # pragma: no cover - the sweep module must not need the training stack
        Preempted = ()  # type: ignore[assignment]
    return isinstance(context, Preempted) or code >= 128 or code < 0


class GuardedTask:
    """The task function, with a non-zero `sys.exit` turned into `JobExit` (Hydra's `run_job` catches
    `Exception` only). A class rather than a closure so that submitit pickles it by reference."""

    def __init__(self, task_function: TaskFunction):
        self.task_function = task_function

    def __call__(self, cfg: DictConfig) -> Any:
        try:
            return self.task_function(cfg)
        except SystemExit as exit_:
            code = exit_.code
            if code is None or code == 0:
                return None
            if not isinstance(code, int):  # sys.exit("message"): Python prints it and exits 1
                raise JobExit(1, one_line(str(code))) from exit_
            message = getattr(exit_, "message", None)  # nas.cli.ErrorExit carries the line it printed
            if not message and exit_.__context__ is not None:
                message = f"{type(exit_.__context__).__name__}: {one_line(str(exit_.__context__))}"
            raise JobExit(code, one_line(message or f"exit status {code}"), _is_stop(code, exit_.__context__)) \
                from exit_


@dataclass
class JobRow:
    """One job of a sweep, as the summary shows it."""
    job: int
    overrides: list[str]
    status: str = "not run"  # not run, running, submitted, ok, failed, stopped, interrupted
    exit_code: int | None = None
    error: str = ""
    genotype: str = ""       # <run_dir>/genotype.json of a search
    metric: str = ""         # results.json's primary_metric of a retrain (AP, PCKh) ...
    value: float | None = None  # ... and its value
    run_dir: str = ""
    job_id: str = ""         # the SLURM (or submitit local) job id
    state: str = ""          # the scheduler's final state (SLURM: COMPLETED, FAILED, TIMEOUT, ...)

    def failed(self) -> bool:
        return self.status not in ("ok", "not run", "running", "submitted")

    def read_outputs(self) -> None:
        """The genotype path or primary metric the finished job left in its run directory."""
        run_dir = Path(self.run_dir) if self.run_dir else None
        if run_dir is None:
            return
        if (run_dir / "genotype.json").is_file():
            self.genotype = str(run_dir / "genotype.json")
        results = run_dir / "results.json"
        if results.is_file():
            try:
                data = json.loads(results.read_text())
                self.metric = str(data.get("primary_metric") or "")
                value = data.get(self.metric)
                self.value = float(value) if isinstance(value, (int, float)) else None
            except (OSError, ValueError):
                self.metric = "unreadable results.json"

    def record(self, ret: JobReturn) -> "JobRow":
        """Fill the row from Hydra's JobReturn of this job."""
        if ret.hydra_cfg is not None:
            self.run_dir = str(ret.hydra_cfg.hydra.runtime.output_dir)
        if ret.status == JobStatus.COMPLETED:
            self.status, self.exit_code, self.error = "ok", 0, ""
            self.read_outputs()
            return self
        err = ret._return_value
        if isinstance(err, JobExit):
            self.status = "stopped" if err.stopped else "failed"
            self.exit_code, self.error = err.code, err.message
        else:
            self.status, self.exit_code = "failed", 1
            self.error = f"{type(err).__name__}: {one_line(str(err))}" if err is not None else "unknown failure"
        return self


@dataclass
class Summary:
    """The rows of one sweep, written as summary.csv (for tools) and summary.md (to read) in its sweep dir."""
    sweep_dir: Path
    rows: dict[int, JobRow] = field(default_factory=dict)

    def add(self, row: JobRow) -> JobRow:
        self.rows[row.job] = row
        return row

    def failed(self) -> list[JobRow]:
        return [row for row in self.ordered() if row.failed()]

    def ordered(self) -> list[JobRow]:
        return [self.rows[k] for k in sorted(self.rows)]

    def shared_overrides(self) -> list[str]:
        """Overrides every job has (shown once); a job's own are the rest (what the sweep varies)."""
        rows = self.ordered()
        if len(rows) < 2:
            return []
        common = set(rows[0].overrides).intersection(*(set(r.overrides) for r in rows[1:]))
        return [o for o in rows[0].overrides if o in common]

    def write(self) -> None:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        shared = set(self.shared_overrides())
        columns = [f.name for f in fields(JobRow) if f.name != "overrides"]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["job", "status", "overrides", *[c for c in columns if c not in ("job", "status")],
                         "all_overrides"])
        for row in self.ordered():
            values = asdict(row)
            writer.writerow([row.job, row.status, " ".join(o for o in row.overrides if o not in shared),
                             *["" if values[c] is None else values[c] for c in columns if c not in ("job", "status")],
                             " ".join(row.overrides)])
        atomic_write_text(self.sweep_dir / SUMMARY_CSV, buffer.getvalue())
        atomic_write_text(self.sweep_dir / SUMMARY_MD, self.markdown(shared))

    def markdown(self, shared: set[str]) -> str:
        rows = self.ordered()
        failed = self.failed()
        done = sum(r.status == "ok" for r in rows)
        head = [f"# Sweep {self.sweep_dir}", "",
                f"{len(rows)} jobs: {done} ok, {len(failed)} failed or stopped, "
                f"{len(rows) - done - len(failed)} not finished.", ""]
        if shared:
            head += ["Every job also has: `" + " ".join(o for o in self.shared_overrides()) + "`", ""]
        table = ["| job | status | overrides | result | run dir |", "|---|---|---|---|---|"]
        for row in rows:
            status = row.status
            if row.failed():
                status += f" (exit {row.exit_code}): {row.error}" if row.exit_code is not None else f": {row.error}"
            if row.state:
                status += f" [{row.state}]"
            own = " ".join(o for o in row.overrides if o not in shared)
            result = (f"{row.metric} {row.value:.4f}" if row.value is not None else row.metric) if row.metric \
                else row.genotype
            table.append("| " + " | ".join(_md_cell(c) for c in
                                             (str(row.job), status, f"`{own}`" if own else "", result, row.run_dir))
                         + " |")
        return "\n".join(head + table) + "\n"

    def conclude(self) -> None:
        """Raise SweepFailed naming every failed job (after the summary is written)."""
        failed = self.failed()
        if not failed:
            log.info("sweep summary: %s", self.sweep_dir / SUMMARY_MD)
            return
        shared = set(self.shared_overrides())
        named = "; ".join(f"#{r.job} ({' '.join(o for o in r.overrides if o not in shared) or 'no overrides'}): "
                          f"{r.status}, exit {r.exit_code}: {one_line(r.error, 160)}" for r in failed[:NAMED_FAILURES])
        more = f"; and {len(failed) - NAMED_FAILURES} more" if len(failed) > NAMED_FAILURES else ""
        raise SweepFailed(f"{len(failed)} of {len(self.rows)} jobs failed: {named}{more}. "
                          f"Summary: {self.sweep_dir / SUMMARY_MD}")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def planned_run_dir(hydra_context: HydraContext, config: DictConfig, overrides: Sequence[str], num: int) -> str:
    """Where job `num` will run (hydra.sweep.dir/hydra.sweep.subdir), composed here, before it runs; "" if that
    cannot be known here (e.g. a subdir naming the SLURM job id)."""
    try:
        cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = num
            cfg.hydra.job.id = str(num)
        sweep_dir = OmegaConf.select(cfg, "hydra.sweep.dir")
        subdir = OmegaConf.select(cfg, "hydra.sweep.subdir")
        return str(Path(str(sweep_dir), str(subdir)).absolute())
    except Exception:  # noqa: BLE001 - only a label in the summary
        return ""


def warn_ignored_run_dir(overrides: Sequence[Sequence[str]]) -> None:
    """`run_dir=` names the run directory of a single run; under -m each job runs in hydra.sweep.dir/subdir."""
    if any(o.split("=", 1)[0].lstrip("+~") == "run_dir" for job in overrides for o in job):
        log.warning("run_dir= is not used under -m: each job runs in hydra.sweep.dir/hydra.sweep.subdir "
                    "(set hydra.sweep.dir= instead)")


class LocalLauncher(BasicLauncher):
    """Hydra's basic launcher (the jobs one after another in this process), honest about failures: every job
    runs, summary.csv/md are rewritten after each, and the sweep raises SweepFailed at the end if any failed.
    A job stopped on a signal (checkpoint written, exit 128 + n) stops the sweep with that exit: the signal was
    meant for this process, and the rest are marked "not run"."""

    def __init__(self) -> None:
        super().__init__()
        self.summary: Summary | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=GuardedTask(task_function), config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if self.summary is None:  # one launcher per sweep; a sweeper may call launch once per batch
            self.summary = Summary(sweep_dir)
        summary = self.summary
        warn_ignored_run_dir(job_overrides)
        nums = [initial_job_idx + i for i in range(len(job_overrides))]
        for num, overrides in zip(nums, job_overrides):
            summary.add(JobRow(num, list(filter_overrides(overrides)),
                               run_dir=planned_run_dir(self.hydra_context, self.config, overrides, num)))
        summary.write()
        log.info(f"Launching {len(job_overrides)} jobs locally")
        runs: list[JobReturn] = []
        current: JobRow | None = None
        try:
            for num, overrides in zip(nums, job_overrides):
                log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(sweep_config):
                    sweep_config.hydra.job.id = num
                    sweep_config.hydra.job.num = num
                current = summary.rows[num]
                current.status = "running"
                summary.write()
                ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                              config=sweep_config, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
                runs.append(ret)
                row = current.record(ret)
                current = None
                summary.write()
                _report(row, ret)
                if row.status == "stopped":
                    raise SystemExit(row.exit_code)
        except BaseException:  # Ctrl-C, a stop signal, an error of Hydra's own: the summary still says so
            if current is not None:
                current.status, current.error = "interrupted", "the sweep was interrupted while this job ran"
            summary.write()
            raise
        summary.conclude()
        return runs


def _report(row: JobRow, ret: JobReturn) -> None:
    """A failed job's line in the sweep's log; an internal error's traceback too (Hydra would have printed it)."""
    if row.status == "ok":
        return
    err = ret._return_value
    if isinstance(err, BaseException) and not isinstance(err, JobExit):
        traceback.print_exception(type(err), err, err.__traceback__)
    log.error("job #%d %s (exit %s): %s", row.job, row.status, row.exit_code, row.error)


def register_launchers() -> None:
    """Make conf/hydra/launcher/{local,submitit_local,slurm}.yaml usable; called by `nas.config.register()`.

    Hydra instantiates only launchers it found by scanning the `hydra_plugins` namespace package, and that scan
    misses hydra_plugins/posenas_launchers/ in an editable install (setuptools' finder imports it but does not list
    it), so the classes are registered here by hand (a second registration of a scanned class is harmless)."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.posenas_launchers import launchers
    plugins = Plugins.instance()
    for launcher in (launchers.LocalLauncher, launchers.SubmititLocalLauncher, launchers.SlurmLauncher):
        plugins.register(launcher)
    # conf/hydra/launcher/submitit_local.yaml stands in for hydra-submitit-launcher's ConfigStore entry of the same
    # name, in posenas's apps only. Hydra checks the file against that entry (it passes: same keys) and warns that
    # such checks are deprecated; the file holds every key itself, so nothing rests on the check.
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_local' is validated against ConfigStore",
                            category=UserWarning)
    # ...with two keys of submitit's local executor that the plugin's schema leaves out: the delay of its USR2
    # before the time limit and the number of requeues after one, so a time limit can be tried on one machine
    from dataclasses import make_dataclass
    from hydra.core.config_store import ConfigStore
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
    schema = make_dataclass("PosenasLocalQueueConf", [
        ("_target_", str, "hydra_plugins.posenas_launchers.launchers.SubmititLocalLauncher"),
        ("signal_delay_s", int, 30), ("max_num_timeout", int, 3)], bases=(LocalQueueConf,))
    ConfigStore.instance().store(group="hydra/launcher", name="submitit_local", node=schema(), provider="posenas")
