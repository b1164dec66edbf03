"""The entry points as a user runs them: real processes, tiny data, real files."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO_ROOT, TINY_DATA, TINY_SPACE, module_cmd, run_env

pytestmark = pytest.mark.slow
SEARCH_ANY = [*TINY_DATA, *TINY_SPACE, "batch_size=4"]  # for any strategy
SEARCH = [*SEARCH_ANY, "strategy.warmup_epochs=0"]  # DARTS: the architecture moves from the first step


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _run(cache: Path, module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(module_cmd(module, *args), capture_output=True, text=True, timeout=timeout,
                          env=run_env(cache), cwd=REPO_ROOT)


def _search(cache: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run(cache, "nas.search", *SEARCH, f"run_dir={run_dir}", *extra)


def _alphas(run_dir: Path) -> dict[str, torch.Tensor]:
    model = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    return {k: v for k, v in model.items() if k.startswith("alphas.")}


@pytest.fixture(scope="module")
def searched(cache, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("search") / "run"
    proc = _search(cache, run_dir, "epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"python -m nas.retrain {run_dir / 'genotype.json'}" in proc.stdout
    return run_dir


def test_search_writes_a_complete_run_directory(searched):
    for name in ("genotype.json", "config.yaml", "metrics.jsonl", "last.pt"):
        assert (searched / name).is_file(), name
    records = [json.loads(line) for line in (searched / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    genotype = json.loads((searched / "genotype.json").read_text())
    assert genotype["space"] == "darts_cells" and genotype["input_size"] == [64, 48]
    assert genotype["genotype"] == records[-1]["genotype"]


def test_same_seed_same_genotype(cache, searched, tmp_path):
    # the default search is latency-aware: it times its ops, so a repeat reads the first run's table
    table = searched / "edge_latency.json"
    assert table.is_file()
    proc = _search(cache, tmp_path / "again", "epochs=3", f"strategy.latency_table={table}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((searched / "genotype.json").read_text())["genotype"]
    assert json.loads((tmp_path / "again" / "genotype.json").read_text())["genotype"] == first
    for key, value in _alphas(searched).items():
        assert torch.equal(value, _alphas(tmp_path / "again")[key]), key


def test_sigkill_then_resume_gives_the_uninterrupted_result(cache, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _search(cache, full, "epochs=4", "max_steps_per_epoch=2").returncode == 0
    pin = f"strategy.latency_table={full / 'edge_latency.json'}"  # the same op times as the full run
    args = [*SEARCH, f"run_dir={killed}", "epochs=4", "max_steps_per_epoch=2", pin]
    proc = subprocess.Popen(module_cmd("nas.search", *args), env=run_env(cache), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (killed / "last.pt").exists():  # at least one epoch done, the rest still to run
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "last.pt").exists() and not (killed / "genotype.json").exists()
    epoch_at_kill = torch.load(killed / "last.pt", weights_only=True)["epoch"]
    assert epoch_at_kill < 3
    refused = _search(cache, killed, "epochs=4", "max_steps_per_epoch=2", pin)
    assert refused.returncode == 2 and "resume=true" in refused.stderr
    resumed = _search(cache, killed, "epochs=4", "max_steps_per_epoch=2", pin, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (json.loads((killed / "genotype.json").read_text())["genotype"]
            == json.loads((full / "genotype.json").read_text())["genotype"])
    for key, value in _alphas(full).items():
        assert torch.equal(value, _alphas(killed)[key]), key
    for log_file in ("metrics.jsonl", "arch_weights.jsonl"):  # resumed epochs are not repeated
        epochs = [json.loads(line)["epoch"] for line in (killed / log_file).read_text().splitlines()]
        assert epochs == [0, 1, 2, 3], log_file


def test_retrain_writes_results_with_coco_metrics(cache, searched, tmp_path):
    proc = _run(cache, "nas.retrain", str(searched / "genotype.json"), *TINY_DATA, "epochs=2",
                "batch_size=4", f"run_dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    for key in ("AP", "AP50", "AP75", "APm", "APl", "AR", "params", "GFLOPs", "input_size"):
        assert key in results, key
    assert 0.0 <= results["AP"] <= 1.0 and results["params"] > 0 and results["GFLOPs"] > 0
    assert (tmp_path / "r" / "best.pt").is_file()
    preds = json.loads((tmp_path / "r" / "best_predictions.json").read_text())
    assert preds and len(preds[0]["keypoints"]) == 51
    # the checkpoint alone (it carries the genotype) rebuilds the network and scores the same
    again = _run(cache, "nas.evaluate", str(tmp_path / "r" / "best.pt"), *TINY_DATA[:4], "num_workers=0")
    assert again.returncode == 0, again.stderr[-3000:]
    scores = json.loads((tmp_path / "r" / "eval_metrics.json").read_text())
    assert abs(scores["AP"] - results["AP"]) < 1e-9 and abs(scores["AR"] - results["AR"]) < 1e-9
    dark = _run(cache, "nas.evaluate", str(tmp_path / "r" / "best.pt"), *TINY_DATA[:4], "num_workers=0",
                "decode=dark", f"out_dir={tmp_path / 'dark'}")
    assert dark.returncode == 0, dark.stderr[-3000:]
    dark_preds = json.loads((tmp_path / "dark" / "eval_predictions.json").read_text())
    plain_preds = json.loads((tmp_path / "r" / "eval_predictions.json").read_text())
    assert len(dark_preds) == len(plain_preds)  # DARK's own accuracy is tested in test_dark.py
    bad = _run(cache, "nas.evaluate", str(tmp_path / "r" / "best.pt"), "decode=nearest")
    assert bad.returncode == 2 and "decode='nearest'" in bad.stderr


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "posenas.genotype", "version": 2}', "missing field"),
])
def test_malformed_genotype_is_one_line_and_exit_2(cache, tmp_path, content, message):
    path = tmp_path / "bad genotype.json"
    path.write_text(content)
    proc = _run(cache, "nas.retrain", str(path), "epochs=1", f"run_dir={tmp_path / 'r'}")  # not in the checkout
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_op_in_genotype(cache, searched, tmp_path):
    data = json.loads((searched / "genotype.json").read_text())
    data["genotype"]["fusion"][1][0] = "__import__('os').system('true')"
    path = tmp_path / "g.json"
    path.write_text(json.dumps(data))
    proc = _run(cache, "nas.retrain", str(path), f"run_dir={tmp_path / 'r'}")  # not in the checkout
    assert proc.returncode == 2 and "genotype.fusion[1]" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_config_value_fails_before_work(cache, tmp_path):
    proc = _search(cache, tmp_path / "x", "epochs=abc")
    assert proc.returncode != 0 and "epochs" in proc.stderr
    assert not (tmp_path / "x" / "last.pt").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(cache, searched, tmp_path):
    run_dir = tmp_path / "nan"
    proc = _run(cache, "nas.retrain", str(searched / "genotype.json"), *TINY_DATA, "epochs=3",
                "batch_size=4", "eval_every=0", f"run_dir={run_dir}",
                "criterion._target_=tests.helpers.NaNAfter", "~criterion.use_target_weight", "+criterion.after=4")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "training loss is nan" in proc.stderr and "Traceback" not in proc.stderr
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["epoch"] == 0  # the epoch that finished before the NaN, intact on disk
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_retrain_killed_and_resumed_matches_uninterrupted(cache, searched, tmp_path):
    args = [str(searched / "genotype.json"), *TINY_DATA, "epochs=4", "batch_size=4", "eval_every=1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _run(cache, "nas.retrain", *args, f"run_dir={full}").returncode == 0
    proc = subprocess.Popen(module_cmd("nas.retrain", *args, f"run_dir={killed}"), env=run_env(cache),
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (killed / "last.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    resumed = _run(cache, "nas.retrain", *args, f"run_dir={killed}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(full / "last.pt", weights_only=True)["model"]
    b = torch.load(killed / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (json.loads((full / "results.json").read_text())["AP"]
            == json.loads((killed / "results.json").read_text())["AP"])


def test_missing_required_values_are_named(cache, tmp_path):
    proc = _run(cache, "nas.search", "data=coco", f"run_dir={tmp_path / 'c'}")
    assert proc.returncode == 2 and "data.root" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run(cache, "nas.search", "data=coco", "data.root=/no/such/coco", f"run_dir={tmp_path / 'd'}")
    assert proc.returncode == 2 and "/no/such/coco" in proc.stderr
    proc = _run(cache, "nas.retrain", f"run_dir={tmp_path / 'e'}")
    assert proc.returncode == 2 and "genotype" in proc.stderr


def _mpii_root(tmp_path: Path) -> Path:
    """A tiny MPII root: 2 images of 128 x 128, 2 people each, all 16 joints labelled (1-based json)."""
    import cv2
    import numpy as np
    root = tmp_path / "mpii"
    (root / "annot").mkdir(parents=True)
    (root / "images").mkdir()
    people = []
    for i in range(2):
        cv2.imwrite(str(root / "images" / f"{i}.jpg"), np.full((128, 128, 3), 60 * i + 20, np.uint8))
        for x in (40.0, 88.0):
            joints = [[x + (j % 4) * 3, 20.0 + j * 5] for j in range(16)]
            people.append({"image": f"{i}.jpg", "center": [x, 60.0], "scale": 0.5, "joints": joints,
                           "joints_vis": [1] * 16})
    for split in ("train", "valid"):
        (root / "annot" / f"{split}.json").write_text(json.dumps(people))
    return root


def test_retrain_and_evaluate_on_mpii_report_pckh(tmp_path):
    mpii = ["data=mpii", f"data.root={_mpii_root(tmp_path)}", "data.input_size=[64,64]",
            "data.heatmap_size=[16,16]", "num_workers=0", "+space_args.num_keypoints=16"]
    proc = _run(tmp_path, "nas.retrain", "genotypes/weak_plain_conv.json", *mpii, "epochs=1",
                "batch_size=2", f"run_dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["primary_metric"] == "PCKh" and "AP" not in results
    assert 0.0 <= results["PCKh"] <= 100.0 and results["PCKh"] == results["Mean"]
    assert "PCKh " in proc.stdout
    preds = json.loads((tmp_path / "r" / "best_predictions.json").read_text())
    assert sorted(p["index"] for p in preds) == [0, 1, 2, 3]  # one per person, aligned by index
    again = _run(tmp_path, "nas.evaluate", str(tmp_path / "r" / "best.pt"), *mpii[:5])
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip().splitlines()[-1].startswith("PCKh ")  # the primary metric first
    scores = json.loads((tmp_path / "r" / "eval_metrics.json").read_text())
    assert scores["PCKh"] == pytest.approx(results["PCKh"])


def _retrain_with_a_corrupt_image(tmp_path: Path, max_bad_fraction: float) -> subprocess.CompletedProcess:
    """Retrain the weak genotype on 4 written COCO images, the second one corrupt (train and val)."""
    from tests.test_bad_input import _pose, write_coco
    root = write_coco(tmp_path, [_pose(i) for i in range(4)], corrupt=(1,))
    return _run(tmp_path, "nas.retrain", "genotypes/weak_plain_conv.json", "data=coco", f"data.root={root}",
                "data.input_size=[64,48]", "data.heatmap_size=[16,12]", "num_workers=0", "epochs=1",
                "batch_size=2", f"data.max_bad_fraction={max_bad_fraction}", f"run_dir={tmp_path / 'r'}")


def test_retrain_aborts_on_unreadable_training_images_in_one_line(tmp_path):
    proc = _retrain_with_a_corrupt_image(tmp_path, 0)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "000000000002.jpg" in last and "max_bad_fraction" in last
    assert "Traceback" not in proc.stderr


def test_unreadable_val_image_is_a_one_line_error_naming_it(tmp_path):
    """Training skips the corrupt image (1 of 4 <= 0.5), evaluation cannot: exit 2, one line, the file."""
    proc = _retrain_with_a_corrupt_image(tmp_path, 0.5)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "skipped unreadable training image" in proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot read image") and last.endswith(
        "val2017/000000000002.jpg (missing, empty or not an image)")
    assert "Traceback" not in proc.stderr


# Strategies whose budget is not epochs x steps get their own tiny settings here (optional: a strategy
# without an entry still runs, at its default budget).
TINY_STRATEGY = {"darts": ["strategy.warmup_epochs=0"], "darts_second_order": ["strategy.warmup_epochs=0"],
                 "darts_latency": ["strategy.warmup_epochs=0"],
                 "random": ["strategy.num_samples=2", "strategy.steps_per_candidate=1"],
                 "random_weight_sharing": ["strategy.num_samples=2", "strategy.supernet_steps=2"],
                 "evolution": ["strategy.supernet_steps=1", "strategy.population=2", "strategy.parents=1",
                               "strategy.generations=1", "strategy.mutations=1", "strategy.crossovers=1"]}


@pytest.mark.parametrize("strategy", sorted(p.stem for p in (REPO_ROOT / "conf" / "strategy").glob("*.yaml")))
def test_every_strategy_config_runs_a_search(cache, tmp_path, strategy):
    proc = _run(cache, "nas.search", *SEARCH_ANY, f"run_dir={tmp_path / strategy}", f"strategy={strategy}",
                "epochs=1", "max_steps_per_epoch=1", *TINY_STRATEGY.get(strategy, []))
    assert proc.returncode == 0, proc.stderr[-3000:]
    provenance = json.loads((tmp_path / strategy / "genotype.json").read_text())["provenance"]
    assert provenance["strategy"] == strategy


def test_skip_count_is_logged_and_capped(cache, tmp_path):
    run_dir = tmp_path / "cap"
    proc = _search(cache, run_dir, "epochs=2", "max_steps_per_epoch=2", "search_space.max_skips=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:  # the logged count is the count in the logged genotype
        assert record["skip_connects"] == json.dumps(record["genotype"]).count('"skip_connect"')
    assert "skip_connect" not in json.dumps(json.loads((run_dir / "genotype.json").read_text())["genotype"])


def test_evolution_killed_between_generations_resumes_to_the_same_result(cache, tmp_path):
    """Killed (SIGKILL, from inside the process) after the first generation's checkpoint; resumed, it
    evaluates the same candidates and returns the same genotype as an uninterrupted search."""
    tiny = [*TINY_DATA, "batch_size=4", "search_space=vipnas_mbv3", "strategy=evolution",
            "epochs=1", "strategy.supernet_steps=2", "strategy.population=3", "strategy.parents=2",
            "strategy.generations=3", "strategy.mutations=2", "strategy.crossovers=1",
            "strategy.constraints.gflops=0.01"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _run(cache, "nas.search", *tiny, f"run_dir={full}").returncode == 0
    proc = _run(cache, "nas.search", *tiny, f"run_dir={killed}", "+strategy.kill_at=3",
                "strategy._target_=tests.helpers.EvolutionKilledAt")
    assert proc.returncode == -signal.SIGKILL and not (killed / "genotype.json").exists()
    assert torch.load(killed / "last.pt", weights_only=True)["epoch"] == 2  # training, population, generation 1
    resumed = _run(cache, "nas.search", *tiny, f"run_dir={killed}", "resume=true",
                   "resume_allow_changes=[strategy._target_,strategy.kill_at]")  # the plain strategy again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (json.loads((killed / "genotype.json").read_text())["genotype"]
            == json.loads((full / "genotype.json").read_text())["genotype"])
    evaluated = [json.loads((d / "pareto.json").read_text())["evaluated"] for d in (full, killed)]
    assert [e["genotype"] for e in evaluated[0]] == [e["genotype"] for e in evaluated[1]]
    assert [e.get("AP") for e in evaluated[0]] == [e.get("AP") for e in evaluated[1]]


@pytest.mark.parametrize("module, args, key", [
    ("nas.search", ["strategy.unrolled=maybe"], "strategy.unrolled"),
    ("nas.search", ["search_space=vipnas_mbv3", "+search_space.no_such_option=1"], "search_space.no_such_option"),
    ("nas.retrain", ["genotypes/weak_plain_conv.json", "optimizer.lr=abc"], "optimizer.lr"),
    ("nas.evaluate", ["no_such.pt", "data.sigma=abc"], "data.sigma"),
    ("nas.data", ["data.num_val=abc"], "data.num_val"),
    ("nas.profile", ["genotypes/weak_plain_conv.json", "runs=0"], "runs")])
def test_a_wrong_group_value_stops_every_entry_point_before_any_work(tmp_path, module, args, key):
    """One line naming the key, exit 2, and nothing made: no data generated, no run files written."""
    cache = tmp_path / "cache"
    proc = _run(cache, module, *args, f"run_dir={tmp_path / 'run'}" if module in ("nas.search", "nas.retrain")
                else f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and f"error: {key}" in proc.stderr
    assert not cache.exists()  # the synthetic data was not generated
    assert not any((tmp_path / "run" / name).exists() for name in ("config.yaml", "last.pt", "metrics.jsonl"))


def _run_files(run_dir: Path) -> dict[str, bytes]:
    """The run's own files (Hydra's .hydra/ and the log record every launch, so they are left out)."""
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.suffix != ".log"}


def test_resume_with_a_changed_config_is_refused_unless_allowed_and_recorded(cache, tmp_path):
    run_dir = tmp_path / "run"
    tiny = ["max_steps_per_epoch=1", "threads=1"]
    assert _search(cache, run_dir, "epochs=1", *tiny).returncode == 0
    before = _run_files(run_dir)
    refused = _search(cache, run_dir, "epochs=2", *tiny, "resume=true")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert len(refused.stderr.strip().splitlines()) == 1 and "epochs (1 -> 2)" in refused.stderr
    assert "resume_allow_changes=[epochs]" in refused.stderr
    assert _run_files(run_dir) == before  # nothing touched
    allowed = _search(cache, run_dir, "epochs=2", "max_steps_per_epoch=1", "threads=2", "resume=true",
                      "resume_allow_changes=[epochs]")  # threads differs too, but may: it is not recorded
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    records = [json.loads(line) for line in (run_dir / "resume_changes.jsonl").read_text().splitlines()]
    assert [r["changes"] for r in records] == [{"epochs": {"old": 1, "new": 2}}]
    assert "epochs: 2" in (run_dir / "config.yaml").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]


def test_retrain_resume_with_another_learning_rate_is_refused(tmp_path):
    args = ["genotypes/weak_plain_conv.json", *TINY_DATA, "epochs=1", "batch_size=4", "eval_every=0",
            f"run_dir={tmp_path / 'r'}"]
    assert _run(tmp_path, "nas.retrain", *args).returncode == 0
    before = _run_files(tmp_path / "r")
    refused = _run(tmp_path, "nas.retrain", *args, "optimizer.lr=0.01", "resume=true")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "optimizer.lr (0.005 -> 0.01)" in refused.stderr and "Traceback" not in refused.stderr
    assert _run_files(tmp_path / "r") == before
