"""The runs of a study, launched as Hydra multiruns of the ordinary entry points.

A study never trains anything itself: it starts `python -m nas.search -m ...` and
`python -m nas.retrain -m ...` with every run's output directory inside the study's run directory, so
each run is an ordinary run directory (config.yaml, metrics.jsonl, checkpoints) that can be inspected,
resumed or retrained on its own, and `launcher` overrides (e.g. `hydra/launcher=slurm`) send
the same multiruns to a cluster unchanged.

Resuming a study is the same as resuming its runs: a finished run (genotype.json / results.json) is
reused, a run with a checkpoint is resumed with `resume=true`, and any other is started again.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

from estimators.complexity import count_gflops
from estimators.constraints import emitted_network
from nas.cli import quote_override
from nas.engine.runtime import log
from nas.errors import UserError
from nas.genotype import Genotype, load, save
from nas.spaces import resolve

SEARCH_DONE, RETRAIN_DONE, CHECKPOINT = "genotype.json", "results.json", "last.pt"


@dataclass
class Job:
    """One run of a multirun: its output directory and the overrides that differ between the jobs."""
    run_dir: Path
    values: dict[str, str]


@dataclass
class Launch:
    """Starts the multiruns and waits for them; `on_poll` is called while they run (report refresh)."""
    launcher: list[str] = field(default_factory=list)   # extra overrides of every multirun
    poll_s: float = 30.0
    on_poll: Callable[[], None] | None = None
    record: Path | None = None                           # commands.txt: every command line started

    def multirun(self, module: str, jobs: list[Job], shared: list[str], sweep_dir: Path, subdir: str,
                 done: str) -> None:
        """Run the jobs not finished yet (no `done` file): fresh ones in one multirun, the ones holding
        a checkpoint in another with resume=true. Every job's values must be swept over one key each."""
        pending = [j for j in jobs if not (j.run_dir / done).is_file()]
        for job in jobs:
            if job not in pending:
                refuse_drift(module, job.run_dir, [*(f"{k}={v}" for k, v in job.values.items()), *shared],
                             ignore=set(job.values))
        if len(pending) < len(jobs):
            log.info("%s: reusing %d finished run(s) of %d", module, len(jobs) - len(pending), len(jobs))
        codes: list[int] = []
        for resume in (True, False):
            group = [j for j in pending if (j.run_dir / CHECKPOINT).is_file() == resume]
            if not group:
                continue
            keys = list(group[0].values)
            sweeps = [f"{k}=" + ",".join(j.values[k] for j in group) for k in keys]
            cmd = [sys.executable, "-m", module, "--multirun", *sweeps, *shared,
                   f"resume={str(resume).lower()}", f"hydra.sweep.dir={quote_override(str(sweep_dir))}",
                   f"hydra.sweep.subdir={subdir}", *self.launcher]
            codes.append(self._run(cmd, sweep_dir))
        missing = [str(j.run_dir) for j in jobs if not (j.run_dir / done).is_file()]
        if missing:
            failed = [c for c in codes if c != 0]
            why = f" (the multirun exited with code {failed[-1]}: its error is printed above)" if failed else ""
            raise UserError(f"{module} ended without {done} in {', '.join(missing[:3])}{why}; read the run's "
                            "log there, fix the cause, and rerun the study with resume=true run_dir=<study dir>")

    def _run(self, cmd: list[str], sweep_dir: Path) -> int:
        shown = " ".join(_shell_quote(c) for c in cmd[1:])
        if self.record is not None:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            with self.record.open("a") as handle:
                handle.write("python " + shown + "\n")
        log.info("starting: python %s", shown)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(cmd)
        previous = signal.signal(signal.SIGTERM, _raise_on_term)  # a killed study stops its runs too
        try:
            while True:
                try:
                    code = proc.wait(timeout=self.poll_s)
                    break
                except subprocess.TimeoutExpired:
                    if self.on_poll is not None:
                        self.on_poll()
        except BaseException:  # Ctrl-C or a kill of the study: stop the runs (they resume from checkpoints)
            proc.terminate()
            proc.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        if code != 0:
            log.warning("the multirun exited with code %d (python %s)", code, shown)
        return code


def _raise_on_term(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _shell_quote(text: str) -> str:
    """The argument as a POSIX shell would need it typed (for commands.txt and the report)."""
    if all(c.isalnum() or c in "-_=./,:+[]@%" for c in text):
        return text
    if "'" in text and not any(c in text for c in '"\\`'):
        return '"' + text.replace("$", "\\$") + '"'
    return "'" + text.replace("'", "'\\''") + "'"


def config_drift(module: str, run_dir: Path, overrides: list[str],
                 ignore: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """How the finished run's config.yaml differs from the config `python -m <module> <overrides>`
    composes today, outside the keys a resume may always change (device, threads, channels_last...) and
    the `ignore`d ones (the job's own sweep keys: a moved study's genotype paths name the same files).
    Non-empty when a default changed after the run: reusing it would mix two recipes in one study."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from nas.engine.runtime import saved_config_changes

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return {}
    name = module.rsplit(".", 1)[-1]  # nas.retrain -> the retrain config
    if GlobalHydra.instance().is_initialized():  # inside nas.study's own Hydra app
        cfg = compose(config_name=name, overrides=overrides)
    else:
        with initialize_config_module("conf", version_base="1.3"):
            cfg = compose(config_name=name, overrides=overrides)
    return {key: {"run": v["old"], "now": v["new"]} for key, v in saved_config_changes(saved, cfg, ignore).items()}


def refuse_drift(module: str, run_dir: Path, overrides: list[str], ignore: Collection[str] = ()) -> None:
    drift = list(config_drift(module, run_dir, overrides, ignore).items())
    if drift:
        shown = "; ".join(f"{k}: {v['run']!r} in the run, {v['now']!r} now" for k, v in drift[:4])
        pins = " ".join(f"~{k}" if v["run"] == "<absent>" else f"{k}={v['run']}" for k, v in drift[:4])
        raise UserError(f"{run_dir} finished under another {module} config than this study now gives ({shown}"
                        f"{'; ...' if len(drift) > 4 else ''}), e.g. a default changed since; add the run's values "
                        f"to the study's overrides of {module} ({pins}) with resume_allow_changes naming that "
                        "study key, or start the study in a new run_dir")


def search_jobs(study_dir: Path, seeds: list[int]) -> list[Job]:
    return [Job(study_dir / "search" / f"seed{s}", {"seed": str(s)}) for s in seeds]


def run_searches(launch: Launch, study_dir: Path, seeds: list[int], overrides: list[str],
                 search_from: str | None = None) -> dict[int, Path]:
    """Search once per seed; returns seed -> the run directory (holding genotype.json). With
    `search_from` (another study's directory), its finished searches of the same seeds are linked in
    instead of searching again, provided they ran with exactly these overrides."""
    jobs = search_jobs(study_dir, seeds)
    if search_from is not None:
        for seed, job in zip(seeds, jobs):
            link_search(Path(search_from) / "search" / f"seed{seed}", job.run_dir, [f"seed={seed}", *overrides])
    launch.multirun("nas.search", jobs, list(overrides), study_dir / "search", "seed${seed}", SEARCH_DONE)
    return {s: j.run_dir for s, j in zip(seeds, jobs)}


def link_search(source: Path, target: Path, overrides: list[str]) -> None:
    """Link a finished search of another study into this one (no copy: it stays that study's run)."""
    if target.exists() or target.is_symlink():
        return
    if not (source / SEARCH_DONE).is_file():
        raise UserError(f"study.search_from: {source} holds no finished search ({SEARCH_DONE}); run that "
                        "study to the end first, or drop study.search_from")
    ran = [o for o in (read_yaml_list(source / ".hydra" / "overrides.yaml")) if not o.startswith("resume=")]
    if sorted(ran) != sorted(overrides):
        raise UserError(f"study.search_from: {source} ran with overrides {ran}, not this study's {overrides}; "
                        "its search is another search, so it cannot stand for this one")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source.resolve(), target_is_directory=True)
    log.info("search seed reused from %s", source)


def read_yaml_list(path: Path) -> list[str]:
    from omegaconf import OmegaConf
    if not path.is_file():
        raise UserError(f"{path} is missing, so the overrides that search ran with are unknown")
    return [str(o) for o in OmegaConf.load(path)]


def run_retrains(launch: Launch, study_dir: Path, genotypes: list[Path], overrides: list[str]) -> dict[str, Path]:
    """Retrain every genotype file under one config; returns file stem -> run directory."""
    stems = [g.stem for g in genotypes]
    if len(set(stems)) != len(stems):
        raise UserError("two genotype files of the study share a name; each retrain run is named after its file")
    jobs = [Job(study_dir / "retrain" / g.stem, {"genotype": quote_override(str(g.resolve()))}) for g in genotypes]
    launch.multirun("nas.retrain", jobs, list(overrides), study_dir / "retrain", "'${path_stem:${genotype}}'",
                    RETRAIN_DONE)
    return {g.stem: j.run_dir for g, j in zip(genotypes, jobs)}


def gflops(genotype: Genotype) -> float:
    """GFLOPs of the network nas.retrain builds from the genotype file, at its input size."""
    return count_gflops(emitted_network(genotype), tuple(genotype.input_size))


def matched_random(searched: Genotype, count: int, tolerance: float, max_draws: int, seed: int
                   ) -> list[tuple[Genotype, float]]:
    """`count` distinct random members of the searched genotype's space (same space_args and input size)
    whose GFLOPs lie within `tolerance` (relative) of the searched one's, drawn uniformly by the space's
    own `sample` with a generator seeded by `seed`; those are rejection-sampled, so they are uniform
    among the matched members. Refuses, with the closest ratio seen, when fewer match in `max_draws`."""
    space = resolve(searched)
    target = gflops(searched)
    rng = random.Random(seed)
    found: list[tuple[Genotype, float]] = []
    seen = {json.dumps(searched.genotype, sort_keys=True)}
    closest = float("inf")
    for _ in range(max_draws):
        g = space.sample(rng)
        key = json.dumps(g.genotype, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        # the searched file's own space_args: the shipped config may add build-time changes (darts_cells's
        # retrain_channels) that the searched file has already applied
        g = Genotype(space=searched.space, genotype=g.genotype, space_args=dict(searched.space_args),
                     input_size=searched.input_size, heatmap_size=searched.heatmap_size)
        cost = gflops(g)
        ratio = cost / target
        closest = min(closest, abs(ratio - 1))
        if abs(ratio - 1) <= tolerance:
            found.append((Genotype(space=g.space, genotype=g.genotype, space_args=g.space_args,
                                   input_size=g.input_size, heatmap_size=g.heatmap_size,
                                   provenance={"strategy": "random (GFLOPs-matched)", "seed": seed,
                                               "GFLOPs": cost, "matched_to_GFLOPs": target,
                                               "tolerance": tolerance}), cost))
            if len(found) == count:
                return found
    raise UserError(f"only {len(found)} of {count} random genotypes within {tolerance:.0%} of the searched "
                    f"genotype's {target:.4f} GFLOPs in {max_draws} draws (closest seen: {closest:.1%} off); "
                    "raise study.flops_tolerance or study.max_draws")


def write_once(genotype: Genotype, path: Path) -> Path:
    """Save a genotype file the study made, or keep the one a previous (killed) study run saved."""
    if path.is_file():
        return path
    return save(genotype, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}; remove the run directory holding it and rerun the "
                        "study with resume=true to redo that run") from None


def retrained_metric(run_dir: Path, metric: str, which: str) -> float | None:
    """The retrained metric of a finished run (None while unfinished): the best epoch's (`best`, as
    published numbers are) or the last epoch's (`last`, without model selection)."""
    path = run_dir / RETRAIN_DONE
    if not path.is_file():
        return None
    results = read_json(path)
    value = results[metric] if which == "best" else results.get("last", {}).get(metric)
    return None if value is None else float(value)


def genotype_agreement(a: Any, b: Any) -> float:
    """Share of the leaves (ops, inputs, widths...) two genotypes have in common, position by position."""
    la, lb = _leaves(a), _leaves(b)
    keys = set(la) | set(lb)
    return sum(la.get(k, object()) == lb.get(k, object()) for k in keys) / max(1, len(keys))


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key in tree for k, v in _leaves(tree[key], f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, item in enumerate(tree) for k, v in _leaves(item, f"{prefix}/{i}").items()}
    return {prefix: tree}


def arch_gap(search_dir: Path) -> float | None:
    """Median over the edges of the last epoch of the gap between the largest and second-largest
    softmaxed op weight (None for strategies without architecture weights)."""
    path = search_dir / "arch_weights.jsonl"
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        return None
    gaps = []
    for name, rows in json.loads(lines[-1])["weights"].items():
        if name.startswith("beta") or not rows or not isinstance(rows[0], list):
            continue
        for row in rows:
            top = sorted(row, reverse=True)
            gaps.append(top[0] - top[1])
    if not gaps:
        return None
    gaps.sort()
    mid = len(gaps) // 2
    return gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2


def wall_seconds(run_dir: Path) -> float | None:
    """Sum of the epoch times a run logged (its training time, without startup)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    total = 0.0
    for line in path.read_text().splitlines():
        if line.strip():
            total += float(json.loads(line).get("epoch_s", 0.0) or 0.0)
    return total


def now() -> float:
    return time.time()


__all__ = ["Job", "Launch", "run_searches", "run_retrains", "matched_random", "gflops", "write_once",
           "retrained_metric", "genotype_agreement", "arch_gap", "wall_seconds", "load", "now"]
