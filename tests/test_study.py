"""python -m nas.study end to end at tiny size: both studies, resume, and refusals.

The statistics themselves are checked against hand-worked values in tests/test_study_stats.py; here
the study must launch real multiruns of nas.search / nas.retrain, reuse finished runs, and report
numbers that are those of its runs' results.json files.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nas.genotype import load
from nas.study import stats
from nas.study.runner import gflops, genotype_agreement
from tests.helpers import REPO_ROOT, TINY_DATA, TINY_SPACE, module_cmd, run_env

RETRAIN = [*TINY_DATA, "epochs=1", "batch_size=2", "max_steps_per_epoch=2", "eval_every=1", "flip_test=false"]
DARTS = [*TINY_DATA, *TINY_SPACE, "epochs=2", "max_steps_per_epoch=2", "batch_size=2", "score_images=4",
         "strategy.warmup_epochs=0"]
EVOLUTION = [*TINY_DATA, "search_space=vipnas_mbv3", "strategy=evolution", "epochs=1", "strategy.supernet_steps=2",
             "batch_size=2", "score_images=2", "strategy.population=4", "strategy.parents=2",
             "strategy.generations=1", "strategy.mutations=2", "strategy.crossovers=1"]


def _list(items: list[str]) -> str:
    return "[" + ",".join(f"'{i}'" for i in items) + "]"


def _study(tmp_path: Path, run_dir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(module_cmd("nas.study", f"run_dir={run_dir}", "poll_s=1", *args), capture_output=True,
                          text=True, timeout=timeout, env=run_env(tmp_path / "cache"), cwd=REPO_ROOT)


def _svr_args(seeds: str = "[0,1]") -> list[str]:
    return [f"seeds={seeds}", "study=search_vs_random", "study.search=" + _list(DARTS),
            "study.retrain=" + _list(RETRAIN), "study.random_per_seed=1", "study.flops_tolerance=20"]


@pytest.mark.slow
def test_search_vs_random_runs_end_to_end_and_reports_its_runs_numbers(tmp_path):
    run_dir = tmp_path / "study"
    proc = _study(tmp_path, run_dir, *_svr_args())
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((run_dir / "study.json").read_text())
    assert [r["seed"] for r in table["rows"]] == [0, 1]
    searched, randoms = [], []
    for row in table["rows"]:
        seed = row["seed"]
        # the searched genotype is the seed's search result, retrained under the study's retrain config
        assert load(run_dir / "genotypes" / f"seed{seed}_searched.json").genotype == \
            load(run_dir / "search" / f"seed{seed}" / "genotype.json").genotype
        results = json.loads((run_dir / "retrain" / f"seed{seed}_searched" / "results.json").read_text())
        assert row["searched"] == results["AP"]
        config = (run_dir / "retrain" / f"seed{seed}_searched" / "config.yaml").read_text()
        assert "epochs: 1" in config and "seed: 0" in config
        random_results = json.loads((run_dir / "retrain" / f"seed{seed}_random0" / "results.json").read_text())
        assert row["random"] == [random_results["AP"]]
        # the random genotype is another member of the same space, matched within the stated tolerance
        rnd, srch = load(run_dir / "genotypes" / f"seed{seed}_random0.json"), load(run_dir / "genotypes" / f"seed{seed}_searched.json")
        assert rnd.space == srch.space and rnd.space_args == srch.space_args and rnd.genotype != srch.genotype
        assert abs(gflops(rnd) / gflops(srch) - 1) <= 20
        searched.append(row["searched"])
        randoms.append(row["random"])
    report = (run_dir / "report.md").read_text()
    diff = stats.paired_difference(searched, randoms)
    assert f"**{diff:+.3f}**" in report
    assert "finished" in report.splitlines()[0]
    # agreement across seeds, beside the agreement of two random genotypes (chance), by hand from the files
    g0, g1 = (load(run_dir / "genotypes" / f"seed{s}_searched.json").genotype for s in (0, 1))
    r0, r1 = (load(run_dir / "genotypes" / f"seed{s}_random0.json").genotype for s in (0, 1))
    assert f"seeds 0/1: {genotype_agreement(g0, g1):.0%}" in report
    assert f"agree on {genotype_agreement(r0, r1):.0%} on average (1 pair)" in report
    assert (run_dir / "search_vs_random.png").stat().st_size > 0
    commands = (run_dir / "commands.txt").read_text().splitlines()
    assert len(commands) == 2 and "nas.search --multirun seed=0,1" in commands[0] and "nas.retrain --multirun" in commands[1]

    # a resumed study reuses every finished run and redoes only what is missing
    (run_dir / "retrain" / "seed1_random0" / "results.json").unlink()
    before = (run_dir / "retrain" / "seed0_searched" / "results.json").stat().st_mtime_ns
    proc = _study(tmp_path, run_dir, *_svr_args(), "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "retrain" / "seed1_random0" / "results.json").is_file()
    assert (run_dir / "retrain" / "seed0_searched" / "results.json").stat().st_mtime_ns == before
    commands = (run_dir / "commands.txt").read_text().splitlines()
    assert len(commands) == 3 and "seed1_random0" in commands[2] and "seed0_searched" not in commands[2]
    assert "resume=true" in commands[2]  # its last.pt was left: resumed, not started again

    # a changed study config on resume is refused, naming the key; nothing is touched
    proc = _study(tmp_path, run_dir, *_svr_args(), "study.random_per_seed=2", "resume=true")
    assert proc.returncode == 2 and "study.random_per_seed" in proc.stderr
    assert len((run_dir / "commands.txt").read_text().splitlines()) == 3

    # another study may stand on these searches (same overrides, same seeds) instead of searching again
    other = tmp_path / "other"
    proc = _study(tmp_path, other, *_svr_args("[1]"), f"study.search_from={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any("nas.search" in c for c in (other / "commands.txt").read_text().splitlines())
    assert load(other / "genotypes" / "seed1_searched.json").genotype == \
        load(run_dir / "search" / "seed1" / "genotype.json").genotype
    # ... but not on searches made with other overrides
    proc = _study(tmp_path, tmp_path / "third", *_svr_args("[1]"), f"study.search_from={run_dir}",
                  "study.search=" + _list([*DARTS, "strategy.grad_clip=1.0"]))
    assert proc.returncode == 2 and "cannot stand for this one" in proc.stderr


@pytest.mark.slow
def test_proxy_fidelity_runs_end_to_end_on_an_evolution_run(tmp_path):
    run_dir = tmp_path / "study"
    proc = _study(tmp_path, run_dir, "seeds=[3,4]", "study=proxy_fidelity", "study.search=" + _list(EVOLUTION),
                  "study.retrain=" + _list(RETRAIN), "study.candidates=3", "study.precision_k=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((run_dir / "study.json").read_text())
    report = (run_dir / "report.md").read_text()
    assert "Kendall tau" in report and (run_dir / "proxy_fidelity.png").stat().st_size > 0
    for seed in (3, 4):
        evaluated = json.loads((run_dir / "search" / f"seed{seed}" / "pareto.json").read_text())["evaluated"]
        feasible = [e for e in evaluated if not e["violations"]]
        ranked = sorted(feasible, key=lambda e: -e["AP"])
        rows = [r for r in table["rows"] if r["seed"] == seed]
        scores = [r["score"] for r in rows]
        # evenly spread over the ranking: the best, the middle and the worst scored candidate
        assert scores == [ranked[0]["AP"], ranked[round((len(ranked) - 1) / 2)]["AP"], ranked[-1]["AP"]]
        finals = [json.loads((run_dir / "retrain" / f"seed{seed}_candidate{j}" / "results.json").read_text())["AP"]
                  for j in range(3)]
        assert [r["final"] for r in rows] == finals
        # the second score recorded by the search (held-out heatmap loss) travels with each candidate
        losses = {json.dumps(e["genotype"], sort_keys=True): e["neg_heatmap_loss"] for e in feasible}
        for j, row in enumerate(rows):
            genotype = load(run_dir / "genotypes" / f"seed{seed}_candidate{j}.json").genotype
            assert row["other_scores"]["neg_heatmap_loss"] == losses[json.dumps(genotype, sort_keys=True)]
        tau = stats.kendall_tau(scores, finals)
        if tau == tau:  # a constant side gives NaN, shown as nan
            assert f"| {seed} | 3 | {tau:.3f} |" in report


def test_a_study_refuses_an_unknown_key_and_a_used_directory(tmp_path):
    proc = _study(tmp_path, tmp_path / "a", "+study.random_per_sed=2")
    assert proc.returncode == 2 and "random_per_sed" in proc.stderr
    used = tmp_path / "b"
    used.mkdir()
    (used / "config.yaml").write_text("seeds: [0]\n")
    proc = _study(tmp_path, used, "seeds=[0]")
    assert proc.returncode == 2 and "resume=true" in proc.stderr
    assert (used / "config.yaml").read_text() == "seeds: [0]\n"


def test_genotype_agreement_counts_equal_leaves_by_hand():
    a = {"normal": [["conv_3x3", 0], ["skip_connect", 1]]}
    b = {"normal": [["conv_3x3", 1], ["skip_connect", 1]]}
    assert genotype_agreement(a, b) == 3 / 4  # ops equal twice, inputs once of twice
    assert genotype_agreement(a, a) == 1.0


@pytest.mark.slow
def test_a_terminated_study_stops_the_runs_it_started(tmp_path):
    """SIGTERM (what a scheduler or `kill` sends) must not orphan the multirun: it keeps the CPUs busy
    and would race the resumed study for the same run directories."""
    import os
    import signal
    import time

    cmd = module_cmd("nas.study", f"run_dir={tmp_path / 'study'}", "poll_s=1", *_svr_args("[0]"))
    study = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=run_env(tmp_path / "cache"), cwd=REPO_ROOT)
    deadline, children = time.monotonic() + 120, []
    while not children and time.monotonic() < deadline and study.poll() is None:
        found = subprocess.run(["pgrep", "-P", str(study.pid)], capture_output=True, text=True).stdout
        children = [int(p) for p in found.split()]
        time.sleep(0.2)  # polling for the child to appear, not timing anything
    assert children, "the study started no multirun"
    study.send_signal(signal.SIGTERM)
    assert study.wait(timeout=60) != 0
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _finished_retrain(run_dir: Path, overrides: list[str]) -> None:
    """A run directory whose config.yaml is what nas.retrain saves for `overrides` (composed the same way)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from nas.config import register
    register()
    with initialize_config_module("conf", version_base="1.3"):
        cfg = compose(config_name="retrain", overrides=overrides)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def test_a_reused_run_must_match_the_config_the_study_would_run_now(tmp_path):
    # A finished run trained at lr 1e-3 while the study's overrides now give the default lr: reusing it
    # would mix two recipes, so the study names the key; the same overrides pass; free keys do not count.
    from nas.errors import UserError
    from nas.study.runner import config_drift, refuse_drift
    shared = ["genotype=g.json", "epochs=4", "seed=0"]
    _finished_retrain(tmp_path / "old", [*shared, "optimizer.lr=1e-3", "threads=2", "channels_last=false"])
    drift = config_drift("nas.retrain", tmp_path / "old", shared)
    assert list(drift) == ["optimizer.lr"] and drift["optimizer.lr"]["run"] == 0.001
    assert config_drift("nas.retrain", tmp_path / "old", [*shared, "optimizer.lr=1e-3"]) == {}
    with pytest.raises(UserError, match=r"optimizer\.lr.*optimizer\.lr=0\.001"):
        refuse_drift("nas.retrain", tmp_path / "old", shared)
    assert config_drift("nas.retrain", tmp_path / "missing", shared) == {}  # nothing saved: nothing to compare
    # the job's own sweep key (a moved study's genotype path) is its identity, not its recipe
    moved = ["genotype=elsewhere/g.json", "epochs=4", "seed=0", "optimizer.lr=1e-3"]
    assert list(config_drift("nas.retrain", tmp_path / "old", moved)) == ["genotype"]
    assert config_drift("nas.retrain", tmp_path / "old", moved, ignore={"genotype"}) == {}


def test_the_report_gives_no_interval_until_two_seeds_have_finished(tmp_path):
    # The interval resamples seeds: over one finished seed it would be a single point (and "exclude zero").
    from types import SimpleNamespace

    from nas.study.report import _search_vs_random
    study = SimpleNamespace(search=[], random_per_seed=2, tolerance=0.1, retrain=["epochs=1"], retrain_seed=0,
                            genotype_files=lambda d, s: [])

    def row(seed, searched, random):
        return {"seed": seed, "searched": searched, "random": random, "metric": "AP", "search_s": 1.0,
                "arch_gap": None, "searched_GFLOPs": 0.01, "random_GFLOPs": [0.01],
                "random_mean": sum(random) / len(random) if random else None, "random_std": 0.0, "retrain_s": []}
    boot = {"level": 0.95, "resamples": 200, "seed": 0}
    one = "\n".join(_search_vs_random(study, {"rows": [row(0, 0.3, [0.2]), row(1, None, [])], "metric": "AP"},
                                      tmp_path, boot))
    assert "no interval yet" in one and "excludes" not in one and "**+0.100**" in one
    two = "\n".join(_search_vs_random(study, {"rows": [row(0, 0.3, [0.2]), row(1, 0.5, [0.2])], "metric": "AP"},
                                      tmp_path, boot))
    # paired differences +0.1 and +0.3: mean +0.2; resampling two seeds gives means in [0.1, 0.3]
    assert "**+0.200**" in two and "interval [+0.100, +0.300]" in two and "excludes zero" in two
