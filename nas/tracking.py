"""Experiment tracking: the `logger` config group (`logger=none`, `csv` or `wandb`).

The run directory stays the record of a run (metrics.jsonl, arch_weights.jsonl, genotype.json,
results.json, the plots); a logger mirrors what the loops already write there to a place that is easier
to browse and compare across runs. So a logger never holds anything the run directory lacks, a failed
or missing logger loses nothing, and the default (`logger=none`) costs nothing.

- `NoLogger` does nothing: `logger=none`, and every rank but 0 of a distributed run (one copy is enough).
- `CsvLogger` keeps `<run_dir>/metrics.csv`, one row per step, for spreadsheets and pandas.
- `WandbLogger` logs to Weights & Biases, offline by default: a cluster node with no network writes the
  run inside the run directory (`<run_dir>/wandb/offline-run-*`) and it is uploaded later with
  `wandb sync <run_dir>/wandb`. Its run id is kept in `<run_dir>/wandb_run_id.txt`, so a resumed or
  requeued run continues the same wandb run. wandb is imported only here, only when it is chosen.

What is logged, by every logger (`flatten_record`): the numbers of a metrics record are metrics
(booleans as 0/1); strings and nested values (the genotype, skipped_images) are text, nested values as
compact JSON. The CSV has a column for each; wandb charts the numbers and keeps the latest text in the
run's summary (the per-epoch genotypes stay in metrics.jsonl).

Use (the entry points): `with make_logger(cfg.logger, run_dir, config, rank) as tracker:` then
`tracker.log_metrics(record, step=epoch)` beside each `MetricsLog.write`, `tracker.log_arch_weights(record)`
beside each arch_weights.jsonl record, `tracker.log_artifact(path, kind)` for the files a run ends with,
and on a resume `backfill(tracker, run_dir, start_epoch)` (a logger new to the run gets the earlier epochs).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import numbers
import os
import re
import secrets
import shlex
import shutil
import string
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Mapping, Sequence

from nas.errors import UserError
from nas.utils.io import atomic_write_text

log = logging.getLogger("posenas")

RUN_ID_FILE = "wandb_run_id.txt"
WANDB_MODES = ("offline", "online", "disabled")
_RUN_ID = re.compile(r"^[a-z0-9_-]{1,64}$", re.IGNORECASE)  # what wandb accepts as a run id, within reason


# ---- what a record becomes ----------------------------------------------------------------------------

def flatten_record(record: Mapping[str, Any]) -> tuple[dict[str, int | float], dict[str, str]]:
    """Split a metrics.jsonl record into (numbers, text).

    Numbers (bool as 0/1) are what a chart can show. A nested value is not flattened into columns: the
    genotype would give one column per edge and skipped_images one per image path, so it becomes one text
    value (compact JSON) instead; strings (e.g. early_stop's reason) are text as they are; None is
    dropped."""
    scalars: dict[str, int | float] = {}
    text: dict[str, str] = {}
    for key, value in record.items():
        key = str(key)
        if value is None:
            continue
        if isinstance(value, bool):
            scalars[key] = int(value)
        elif isinstance(value, numbers.Real):
            scalars[key] = value if isinstance(value, int) else float(value)
        elif isinstance(value, str):
            text[key] = value
        else:
            text[key] = json.dumps(value, separators=(",", ":"), default=str)
    return scalars, text


def arch_weight_scalars(record: Mapping[str, Any], prefix: str = "arch") -> dict[str, float]:
    """An arch_weights.jsonl record ({"epoch", "primitives", "weights": {kind: nested lists}}) as one
    scalar per softmaxed weight: `arch/<kind>/e<edge>/<op>` for an [edge][op] table whose rows are as long
    as `primitives`, `arch/<kind>/e<edge>` for a per-edge list (DARTS cells' beta_* weights), indices
    below that. About 250 numbers an epoch for the DARTS cells: cheap for any tracker, and each weight gets
    its own chart (the whole picture is arch_weights.png)."""
    primitives = [str(p) for p in record.get("primitives") or ()]
    out: dict[str, float] = {}

    def walk(key: str, value: Any, depth: int) -> None:
        if isinstance(value, (list, tuple)):
            by_op = depth >= 1 and len(value) == len(primitives) and not any(isinstance(v, (list, tuple))
                                                                              for v in value)
            for i, item in enumerate(value):
                walk(f"{key}/{primitives[i] if by_op else (f'e{i}' if depth == 0 else i)}", item, depth + 1)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[key] = float(value)

    for kind, weights in (record.get("weights") or {}).items():
        walk(f"{prefix}/{kind}", weights, 0)
    return out


# ---- the loggers --------------------------------------------------------------------------------------

class ExperimentLogger:
    """The interface the search and retrain loops call; every method is a no-op here.

    `start` opens the logger on a run directory (called by `make_logger`); the others may be called in
    any number. Steps are epochs and must not decrease within a run; a resumed run starts again at its
    checkpoint's epoch, and what a logger had past that point is replaced (CsvLogger) or left to the
    tracker (wandb keeps the first value it got for a step)."""

    fresh = False  # started on a run directory it had never logged: `backfill` has the earlier epochs to give it

    def start(self, run_dir: Path, config: Mapping[str, Any]) -> ExperimentLogger:
        return self

    def log_metrics(self, record: Mapping[str, Any], step: int) -> None:
        """One metrics.jsonl record (see `flatten_record` for what becomes of each value)."""

    def log_arch_weights(self, record: Mapping[str, Any]) -> None:
        """One arch_weights.jsonl record; its step is record["epoch"]."""

    def log_artifact(self, path: str | Path, kind: str) -> None:
        """A file the run produced (genotype.json, results.json, pareto.png, arch_weights.png); `kind` names
        what it is (genotype, results, pareto, arch_weights). A file that does not exist is skipped, so a
        caller may offer every file a run can have."""

    def finish(self, failed: bool = False) -> None:
        """Close the logger (idempotent). `failed`: the run ended on an error."""

    def __enter__(self) -> ExperimentLogger:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        clean_exit = isinstance(error, SystemExit) and error.code in (0, None)
        self.finish(failed=error is not None and not clean_exit)


class NoLogger(ExperimentLogger):
    """`logger=none`, and the logger of every rank but 0: the run directory is the only record."""


class CsvLogger(ExperimentLogger):
    """`<run_dir>/<filename>`: a `step` column, then one column per key in the order keys first appear.

    The file is rewritten whole (atomically) at each call: a new key adds a column to every row, which
    a CSV cannot do by appending, and a run of a few hundred epochs makes that a few hundred kilobytes.
    Rewriting also makes a resume exact: the first row a resumed run writes, at step s, drops the rows
    of steps >= s that the killed run wrote after its last checkpoint, so no epoch appears twice. Steps
    written in the same session merge into one row. Architecture weights are not written: they are in
    arch_weights.jsonl in full; neither are artifacts, which are in the run directory already."""

    def __init__(self, filename: str = "metrics.csv"):
        if not filename or Path(filename).is_absolute():
            raise UserError(f"logger.filename={filename!r} must be a file name inside the run directory "
                            "(e.g. metrics.csv)")
        self.filename = filename
        self.path: Path | None = None
        self.columns: list[str] = ["step"]
        self.rows: list[dict[str, Any]] = []
        self._session_steps: set[int] = set()

    def start(self, run_dir: Path, config: Mapping[str, Any]) -> CsvLogger:
        self.path = Path(run_dir) / self.filename
        self.fresh = not self.path.is_file()
        if not self.fresh:
            self._read(self.path)
        return self

    def _read(self, path: Path) -> None:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        if fields and fields[0] != "step":
            raise UserError(f"{path} exists but was not written by logger=csv (its first column is "
                            f"{fields[0]!r}, not 'step'); move it away or set logger.filename= to another name")
        try:
            self.rows = [{**row, "step": int(row["step"])} for row in rows]
        except (TypeError, ValueError):
            raise UserError(f"{path} has a row whose step is not an integer; fix or remove the file "
                            "(metrics.jsonl holds the same numbers)") from None
        self.columns = fields or ["step"]

    def log_metrics(self, record: Mapping[str, Any], step: int) -> None:
        if self.path is None:
            raise RuntimeError("CsvLogger.log_metrics before start()")
        scalars, text = flatten_record(record)
        values: dict[str, Any] = {**scalars, **text}
        step = int(step)
        # rows past this step, and a row of this step from before a resume, are replaced
        self.rows = [r for r in self.rows if r["step"] < step or (r["step"] == step and step in self._session_steps)]
        row = next((r for r in self.rows if r["step"] == step), None)
        if row is None:
            row = {"step": step}
            self.rows.append(row)
        row.update(values)
        self._session_steps.add(step)
        self.columns += [key for key in values if key not in self.columns]
        self._write()

    def _write(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())


class WandbLogger(ExperimentLogger):
    """Weights & Biases, inside the run directory.

    - `mode`: offline (default) writes `<run_dir>/wandb/offline-run-<time>-<id>/` and never touches the
      network or asks for a login; upload later with `wandb sync <run_dir>/wandb` (from any machine that
      sees the run directory and is logged in: `wandb login`). online streams to the server (needs
      `wandb login` or WANDB_API_KEY). disabled starts nothing. The environment variable WANDB_MODE,
      when set, overrides `mode` (WANDB_MODE=offline on a node without network, disabled in CI).
    - The run id is written to `<run_dir>/wandb_run_id.txt` before the first start and reused by every
      later start in that directory (`resume=true`, a requeued job), with `resume="allow"`: the resumed
      process writes a second offline-run directory with the same id, and `wandb sync` uploads both into
      one run, in order. A new run directory gets a new id.
    - The resolved config is the wandb run's config; metrics are charted by epoch; architecture weights
      are one scalar each (`arch_weight_scalars`); files are versioned artifacts named `<id>-<file name>`
      of type `kind`. wandb's files stay under the run directory (`dir=run_dir`); an artifact's file is
      copied into the offline-run directory so the run directory alone is enough to sync.
    - wandb prints nothing (silent) and does not capture the console (the run directory has the log).
    """

    def __init__(self, project: str = "posenas", entity: str | None = None,
                 mode: Literal["offline", "online", "disabled"] = "offline", tags: Sequence[str] = (),
                 name: str | None = None, group: str | None = None):
        if mode not in WANDB_MODES:
            raise UserError(f"logger.mode={mode!r} is not a wandb mode; use one of {', '.join(WANDB_MODES)}")
        if not project:
            raise UserError("logger.project is empty; name the wandb project (e.g. logger.project=posenas)")
        self.project, self.entity, self.mode = project, entity, mode
        self.tags, self.name, self.group = [str(t) for t in tags], name, group
        self.run: Any = None
        self.run_dir: Path | None = None
        self.started_mode: str | None = None
        self.resumed = False
        self._artifacts = 0

    def effective_mode(self) -> str:
        """`mode`, unless WANDB_MODE says otherwise (its old spelling `dryrun` is offline)."""
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        env = "offline" if env == "dryrun" else env
        if not env or env == self.mode:
            return self.mode
        if env not in WANDB_MODES:
            log.warning("WANDB_MODE=%s is not one of %s: ignored, logger.mode=%s is used", env,
                        ", ".join(WANDB_MODES), self.mode)
            return self.mode
        log.info("WANDB_MODE=%s overrides logger.mode=%s", env, self.mode)
        return env

    def start(self, run_dir: Path, config: Mapping[str, Any]) -> WandbLogger:
        mode = self.started_mode = self.effective_mode()
        self.run_dir = Path(run_dir).resolve()
        if mode == "disabled":
            log.info("wandb is disabled (logger.mode or WANDB_MODE): nothing is logged to it")
            return self
        try:
            import wandb
        except ImportError:
            raise UserError("logger=wandb needs the wandb package: pip install wandb (or use logger=csv)") from None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_id, self.resumed = run_id_for(self.run_dir)
        self.fresh = not self.resumed
        settings = wandb.Settings(silent=True, console="off")
        try:
            self.run = wandb.init(project=self.project, entity=self.entity, dir=str(self.run_dir), id=run_id,
                                  resume="allow", name=self.name, group=self.group, tags=self.tags or None,
                                  config=dict(config), allow_val_change=True, mode=mode, settings=settings,
                                  reinit="finish_previous")
        except Exception as err:  # noqa: BLE001 - login, network, a bad entity or project: all the user's
            first = (str(err).strip().splitlines() or [""])[0]
            raise UserError(f"wandb could not start a {mode} run ({type(err).__name__}: {first}); run "
                            "`wandb login` for mode online, or use logger.mode=offline (sync later) or "
                            "logger=none") from None
        again = f" (continuing wandb run {run_id} from {RUN_ID_FILE})" if self.resumed else ""
        if mode == "offline":
            log.info("wandb: offline run %s in %s%s; upload it later with: %s", run_id,
                     Path(self.run.dir).parent, again, self.sync_command())
        else:
            log.info("wandb: run %s at %s%s", run_id, getattr(self.run, "url", None) or "(no url)", again)
        return self

    def sync_command(self) -> str:
        """The command that uploads this run directory's offline wandb runs (all parts of a resumed run)."""
        return f"wandb sync {shlex.quote(str(self.run_dir / 'wandb'))}"

    def log_metrics(self, record: Mapping[str, Any], step: int) -> None:
        if self.run is None:
            return
        scalars, text = flatten_record(record)
        if scalars:
            self.run.log(scalars, step=int(step))
        for key, value in text.items():
            self.run.summary[key] = value

    def log_arch_weights(self, record: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        scalars = arch_weight_scalars(record)
        if scalars:
            self.run.log(scalars, step=int(record.get("epoch", 0)))

    def log_artifact(self, path: str | Path, kind: str) -> None:
        if self.run is None:
            return
        path = Path(path)
        if not path.is_file():
            log.debug("wandb: no %s to log as an artifact", path)
            return
        import wandb
        safe = re.sub(r"[^A-Za-z0-9_.-]", "-", kind) or "file"
        # a copy in this session's offline-run directory: a later rewrite of the file (a resumed run
        # writing results.json again) cannot change what this session's record points to
        self._artifacts += 1
        stash = Path(self.run.dir).parent / "artifact_files" / f"{self._artifacts}-{safe}" / path.name
        stash.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, stash)
        artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.run.id}-{path.name}"), type=safe)
        artifact.add_file(str(stash), name=path.name, policy="immutable")
        self.run.log_artifact(artifact)

    def finish(self, failed: bool = False) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        run.finish(exit_code=1 if failed else 0)
        if self.started_mode == "offline":
            log.info("wandb: offline run %s is complete in %s; upload it with: %s", run.id, self.run_dir / "wandb",
                     self.sync_command())


def run_id_for(run_dir: Path) -> tuple[str, bool]:
    """(the wandb run id of this run directory, whether it was there already).

    The id is created and written before wandb starts, so a process killed during the very first start
    still leaves the id its resumed run will reuse."""
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        if not _RUN_ID.match(run_id):
            raise UserError(f"{path} does not hold a wandb run id ({run_id[:40]!r}); delete it to start a new "
                            "wandb run for this run directory")
        return run_id, True
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # wandb's own form
    atomic_write_text(path, run_id + "\n")
    return run_id, False


def backfill(tracker: ExperimentLogger, run_dir: str | Path, before_epoch: int) -> int:
    """Give a `fresh` logger the epochs < `before_epoch` that the run directory already holds
    (metrics.jsonl, arch_weights.jsonl): a run started with logger=none and resumed with logger=wandb
    or logger=csv then has its whole history there. Does nothing for a logger that has seen this run
    before (a resumed wandb run id, an existing metrics.csv), or on a run's first start. Returns the
    number of records given. Call it on resume, once the loop knows its first epoch."""
    if not tracker.fresh or before_epoch <= 0:
        return 0
    by_epoch: dict[int, list[tuple[str, dict]]] = {}
    for name in ("arch_weights.jsonl", "metrics.jsonl"):  # per epoch in this order, as the search loop logs
        path = Path(run_dir) / name
        for line in path.read_text().splitlines() if path.is_file() else ():
            record = json.loads(line) if line.strip() else None
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] < before_epoch:
                record.pop("time", None)  # MetricsLog's wall clock: the live records have none either
                by_epoch.setdefault(record["epoch"], []).append((name, record))
    given = 0
    for epoch in sorted(by_epoch):  # steps never go back (wandb drops a step lower than the last)
        for name, record in by_epoch[epoch]:
            if name == "arch_weights.jsonl":
                tracker.log_arch_weights(record)
            else:
                tracker.log_metrics(record, step=epoch)
            given += 1
    tracker.fresh = False
    return given


# ---- the factory --------------------------------------------------------------------------------------

def make_logger(cfg_logger: Any, run_dir: str | Path, config: Mapping[str, Any] | Any, rank: int) -> ExperimentLogger:
    """The started logger of `cfg.logger` for this process: NoLogger on every rank but 0 (nothing is built
    or imported there, and one copy of the logs is enough) and for `logger=none` (an empty or null node).

    `config` is the run's resolved config (a dict, or a DictConfig that is resolved here) and becomes the
    tracker's run config. Raises UserError for a config the user can fix."""
    if rank != 0 or cfg_logger is None:
        return NoLogger()
    from omegaconf import DictConfig, OmegaConf
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    if isinstance(cfg_logger, ExperimentLogger):
        logger = cfg_logger
    else:
        node = OmegaConf.to_container(cfg_logger, resolve=True) if isinstance(cfg_logger, DictConfig) else cfg_logger
        if not isinstance(node, Mapping):
            raise UserError(f"logger={node!r} is not a logger config; use logger=none, logger=csv or logger=wandb")
        if not node:
            return NoLogger()
        if "_target_" not in node:
            raise UserError(f"logger has no _target_ (keys: {', '.join(map(str, node))}); use logger=none, "
                            "logger=csv or logger=wandb")
        logger = _instantiate(node)
    if not isinstance(logger, ExperimentLogger):
        raise UserError(f"logger._target_ built a {type(logger).__name__}, not a nas.tracking.ExperimentLogger")
    return logger.start(Path(run_dir), dict(config or {}))


def _instantiate(node: Mapping[str, Any]) -> Any:
    """Hydra's instantiate, with a UserError raised by the logger's constructor passed on as it is
    (Hydra would wrap it in a multi-line InstantiationException)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    try:
        return instantiate(dict(node), _convert_="all")
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise
