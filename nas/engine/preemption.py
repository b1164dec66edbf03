"""Stopping a run cleanly: a signal (SLURM's warning before a time limit or a preemption, a user's
kill) or a periodic timer asks for a checkpoint at the next step boundary.

- The signals (`SIGNALS`: USR1, USR2, TERM; SLURM's `--signal`, submitit's USR2, torchrun and
  schedulers' TERM) only set a flag: a checkpoint written from inside a signal handler could catch a
  half-done optimizer step. The loops call `poll()` after every step; all ranks agree on the answer
  (a signal seen by one process stops them all at the same step).
- On a signal the loop writes a checkpoint that can resume inside the epoch, then `stop()` writes
  `interrupted.json` in the run directory, requeues the job where that is possible (submitit's own
  handler, which Hydra's submitit launcher relies on, is called; under plain SLURM `scontrol requeue`
  when `requeue=true`) and exits with 128 + the signal number. The next start in that run directory
  continues automatically (`nas.engine.runtime.prepare_run_dir`), without resume=true.
- `every_min`: also a checkpoint every N minutes (rank 0's clock decides), so a hard kill loses at most
  that much.
- `POSENAS_HOLD_AT_STEP=N` (environment; for testing a scheduler's time limit): a run that starts fresh
  (not one continuing from its checkpoint) waits at its N-th step boundary until a signal arrives, so the
  scheduler's warning lands at a known step however fast the machine is. Rank 0 waits; the other ranks
  wait for it in the next poll's all-reduce.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from nas.engine import distributed
from nas.engine.runtime import log
from nas.utils.io import atomic_write_text

SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM")
HOLD_ENV = "POSENAS_HOLD_AT_STEP"
HOLD_LIMIT_S = 600.0  # a held run that no signal reaches stops with an error instead of hanging
MARKER = "interrupted.json"  # in a run directory: the run stopped on a signal after checkpointing


class Preempted(Exception):
    """Raised after the checkpoint is written and the requeue asked for; the entry point exits with
    `exit_code` (128 + the signal's number, as a shell reports a process killed by it)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequests:
    def __init__(self, every_min: float | None = None, signals: tuple[str, ...] = SIGNALS,
                 requeue: bool = True, device: torch.device | None = None, fresh: bool = True):
        """`fresh`: the run starts from scratch (not from a checkpoint); only then does `POSENAS_HOLD_AT_STEP`
        apply, so a continued run is not held again."""
        self.every_s = None if not every_min else float(every_min) * 60.0
        self.signal_names, self.requeue, self.device = signals, requeue, device
        self.received: int | None = None
        self.previous: dict[int, Any] = {}
        self.last_save = time.monotonic()
        self.polls = 0
        self.hold_at = _hold_step() if fresh else None

    # ---- signals ------------------------------------------------------------------------------
    def install(self) -> "StopRequests":
        """Catch the signals (main thread only; elsewhere, e.g. a test's thread, nothing is caught)."""
        for name in self.signal_names:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                return self
        return self

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def __enter__(self) -> "StopRequests":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            print(f"posenas: {signal.Signals(signum).name} received: checkpointing at the next step",
                  file=sys.stderr, flush=True)
        self.received = signum

    # ---- the loops' question after every step -------------------------------------------------
    def poll(self) -> str | None:
        """'signal', 'periodic' or None, the same on every rank."""
        self.polls += 1
        if self.polls == self.hold_at and distributed.is_main():
            self._hold()
        due = self.every_s is not None and distributed.is_main() and \
            time.monotonic() - self.last_save >= self.every_s
        code = 2 if self.received is not None else (1 if due else 0)
        if distributed.world().enabled:
            t = torch.tensor([code, self.received or 0], dtype=torch.int64,
                             device=distributed._comm_device(self.device))
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            code = int(t[0])
            if code == 2 and self.received is None:
                self.received = int(t[1]) or signal.SIGTERM
        return {2: "signal", 1: "periodic"}.get(code)

    def _hold(self) -> None:
        log.info("%s=%d: holding at this step until a signal arrives", HOLD_ENV, self.hold_at)
        deadline = time.monotonic() + HOLD_LIMIT_S
        while self.received is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{HOLD_ENV}={self.hold_at}: no signal in {HOLD_LIMIT_S:.0f} s; unset "
                                   f"{HOLD_ENV} (it is for testing a scheduler's time limit)")
            time.sleep(0.05)

    def saved(self) -> None:
        """A checkpoint was written (at an epoch end or on request): the periodic timer restarts."""
        self.last_save = time.monotonic()

    def stop(self, run_dir: Path, epoch: int, step: int) -> None:
        """After the signal's checkpoint: leave the marker, requeue, and raise `Preempted`."""
        signum = self.received or signal.SIGTERM
        name = signal.Signals(signum).name
        if distributed.is_main():
            atomic_write_text(run_dir / MARKER, json.dumps(
                {"signal": name, "epoch": epoch, "step_in_epoch": step, "time": round(time.time(), 3),
                 "slurm_job_id": os.environ.get("SLURM_JOB_ID")}) + "\n")
        distributed.barrier()
        how = self._requeue(signum)
        raise Preempted(f"{name}: checkpoint written at epoch {epoch + 1}, step {step} in {run_dir}; {how}",
                        128 + signum)

    def _requeue(self, signum: int) -> str:
        again = "the same command with this run_dir continues it (no resume=true needed)"
        previous = self.previous.get(signum)
        if callable(previous):  # e.g. submitit's handler: it asks for the requeue itself, then exits
            self.uninstall()
            log.warning("%s: handing over to the launcher's handler (requeue)", signal.Signals(signum).name)
            previous(signum, None)
            return f"the launcher was asked to requeue; {again}"
        job = os.environ.get("SLURM_JOB_ID")
        if job and self.requeue and distributed.is_main():
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if done.returncode == 0:
                return f"SLURM job {job} requeued; {again}"
            log.warning("scontrol requeue %s failed: %s", job, (done.stderr or done.stdout).strip())
        return again


def _hold_step() -> int | None:
    value = os.environ.get(HOLD_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        from nas.errors import UserError
        raise UserError(f"{HOLD_ENV}={value!r} is not a step number (1, 2, ...); unset it to run normally")
    return int(value)


def interrupted(run_dir: Path) -> dict | None:
    """The marker of a run that stopped on a signal after checkpointing, or None."""
    path = run_dir / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"signal": "unknown"}


def clear_interrupted(run_dir: Path) -> None:
    """A run that finished is no longer one to continue."""
    (run_dir / MARKER).unlink(missing_ok=True)
