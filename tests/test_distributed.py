"""Data parallelism on the CPU: 2 gloo processes against 1 process on the concatenated batch.

Each test spawns two ranks that join a real process group through `nas.engine.distributed` (the
torchrun variables RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT), does the work on its half of every
batch, and saves what it ends with; the parent compares the two ranks with each other and with the
same work done in one process on the whole batch. The networks have no batch statistics (BatchNorm
replaced by identities): with BatchNorm each rank normalises its own half, a legitimate difference.
"""
from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from nas.pose.loss import KeypointMSELoss

WORLD = 2
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), POSENAS_DIST_BACKEND="gloo")
    torch.set_num_threads(1)
    from nas.engine import distributed
    w = distributed.init_process_group()
    assert (w.rank, w.size) == (rank, WORLD)


def _spawn(fn, out: Path, *args) -> list[dict]:
    mp.spawn(fn, args=(_free_port(), str(out), *args), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _no_batch_stats(net: nn.Module) -> nn.Module:
    """Every BatchNorm replaced by an identity: the network's output for a sample no longer depends on
    the other samples of its batch, so half batches on two ranks add up to the whole batch."""
    for name, child in net.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(net, name, nn.Identity())
        else:
            _no_batch_stats(child)
    return net


def _batch(seed: int, n: int = 4, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, size, size, generator=g),
            "target": torch.rand(n, 17, size // 4, size // 4, generator=g),
            "target_weight": (torch.rand(n, 17, 1, generator=g) > 0.2).float()}


def _half(batch: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    n = len(batch["image"]) // WORLD
    return {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}


# ---- gradients --------------------------------------------------------------------------------------
def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 17, 3, stride=4, padding=1))


def _grad_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    from nas.engine import distributed
    net = _small_net()
    batch = _half(_batch(1), rank)
    KeypointMSELoss()(net(batch["image"]), batch["target"], batch["target_weight"]).backward()
    distributed.average_gradients(net.parameters())
    torch.save({"grads": [p.grad for p in net.parameters()]}, Path(out) / f"rank{rank}.pt")
    distributed.shutdown(wait=True)


def test_two_rank_gradients_equal_the_one_process_gradients_of_the_whole_batch(tmp_path):
    ranks = _spawn(_grad_worker, tmp_path)
    net, batch = _small_net(), _batch(1)
    KeypointMSELoss()(net(batch["image"]), batch["target"], batch["target_weight"]).backward()
    for r in ranks:
        for got, want in zip(r["grads"], [p.grad for p in net.parameters()]):
            # the mean loss of two equal halves is the mean of their means, so the gradients agree
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert not torch.equal(ranks[0]["grads"][0], torch.zeros_like(ranks[0]["grads"][0]))


# ---- DARTS: first order, second order, PC-DARTS ------------------------------------------------------
def _darts(unrolled: bool, partial_channels: int | None):
    from search_spaces.darts_cells import DartsCellsSpace
    from strategies.darts import Darts
    torch.manual_seed(0)
    space = DartsCellsSpace(init_channels=4, layers=2, steps=2, reductions=1, partial_channels=partial_channels)
    supernet = _no_batch_stats(space.supernet())
    return Darts(space, supernet, KeypointMSELoss(),
                 functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=3e-4),
                 functools.partial(torch.optim.Adam, lr=0.05), epochs=1, steps_per_epoch=STEPS, unrolled=unrolled)


def _darts_run(strategy, rank: int | None) -> dict:
    for step in range(STEPS):
        train, held_out = _batch(100 + step), _batch(200 + step)
        if rank is not None:
            train, held_out = _half(train, rank), _half(held_out, rank)
        strategy.step(train, held_out)
    return {"alphas": [a.detach().clone() for a in strategy.alphas],
            "weights": [w.detach().clone() for w in strategy.weights],
            "genotype": strategy.result().genotype}


def _darts_worker(rank: int, port: int, out: str, unrolled: bool, partial_channels: int | None) -> None:
    _join(rank, port)
    from nas.engine import distributed
    torch.save(_darts_run(_darts(unrolled, partial_channels), rank), Path(out) / f"rank{rank}.pt")
    distributed.shutdown(wait=True)


@pytest.mark.slow
@pytest.mark.parametrize("unrolled,partial_channels", [(False, None), (True, None), (False, 2)],
                         ids=["first_order", "second_order", "pc_darts"])
def test_darts_alphas_and_genotype_agree_on_both_ranks_and_with_one_process(tmp_path, unrolled, partial_channels):
    ranks = _spawn(_darts_worker, tmp_path, unrolled, partial_channels)
    single = _darts_run(_darts(unrolled, partial_channels), None)
    start = [a.detach().clone() for a in _darts(unrolled, partial_channels).alphas]
    for a, b in zip(ranks[0]["alphas"], ranks[1]["alphas"]):
        assert torch.equal(a, b)  # the same averaged gradients, the same optimizer: bit-identical
    assert ranks[0]["genotype"] == ranks[1]["genotype"] == single["genotype"]
    for got, want, before in zip(ranks[0]["alphas"], single["alphas"], start):
        assert not torch.allclose(want, before)  # the architecture moved, so the comparison means something
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for got, want in zip(ranks[0]["weights"], single["weights"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ---- one-shot strategies: the same paths everywhere, the scoring split and gathered ------------------
class _PathLog(nn.Module):
    """A weight-sharing stand-in: a 1x1 convolution that remembers every path it is set to."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 17, 1)
        self.path, self.trained_paths = None, []

    def set_path(self, genotype):
        self.path = genotype

    def forward(self, x):
        if self.training and self.path is not None:
            self.trained_paths.append(self.path.genotype)
        return self.conv(x)[:, :, ::4, ::4]


def _one_shot(kind: str, scored: list):
    from nas.spaces import build_space
    from strategies.evolution import Evolution
    from strategies.random_search import RandomSearch

    def score(model, genotype=None, calibrate=False):  # wider is better; every call is logged
        scored.append(model.path.genotype)
        return {"AP": sum(model.path.genotype["widths"]) / 1000.0}

    space = build_space("plain_conv", {"max_layers": 3})
    common = dict(space=space, supernet=_PathLog(), criterion=KeypointMSELoss(),
                  optimizer=functools.partial(torch.optim.SGD, lr=0.1), epochs=1, steps_per_epoch=STEPS,
                  accuracy=score, seed=3)
    if kind == "evolution":
        return Evolution(**common, input_size=(32, 24), population=6, generations=2, parents=3, mutations=4,
                         crossovers=2)
    return RandomSearch(**common, num_samples=5, weight_sharing=True)


def _one_shot_run(kind: str, rank: int | None) -> dict:
    scored: list = []
    strategy = _one_shot(kind, scored)
    epochs, steps = strategy.schedule()
    for epoch in range(epochs):
        n = strategy.epoch_steps(epoch) if hasattr(strategy, "epoch_steps") else steps
        for step in range(n):
            batch = _batch(300 + step, size=16)
            strategy.step(batch if rank is None else _half(batch, rank), batch)
        strategy.end_epoch()
    return {"trained": strategy.supernet.trained_paths, "scored": scored, "result": strategy.result().genotype,
            "weights": strategy.supernet.conv.weight.detach().clone(),
            "cache": getattr(strategy, "cache", None), "scores": getattr(strategy, "scores", None)}


def _one_shot_worker(rank: int, port: int, out: str, kind: str) -> None:
    _join(rank, port)
    from nas.engine import distributed
    torch.save(_one_shot_run(kind, rank), Path(out) / f"rank{rank}.pt")
    distributed.shutdown(wait=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["evolution", "random_weight_sharing"])
def test_one_shot_paths_agree_and_the_candidates_are_scored_once_over_the_ranks(tmp_path, kind):
    ranks = _spawn(_one_shot_worker, tmp_path, kind)
    single = _one_shot_run(kind, None)
    assert len(single["trained"]) >= STEPS
    assert ranks[0]["trained"] == ranks[1]["trained"] == single["trained"]  # one path per step, everywhere
    assert ranks[0]["result"] == ranks[1]["result"] == single["result"]
    torch.testing.assert_close(ranks[0]["weights"], single["weights"], rtol=1e-5, atol=1e-6)
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])
    # the split: each rank scored some, and together they scored what one process scored, once each
    mine = [[repr(g) for g in r["scored"]] for r in ranks]
    assert mine[0] and mine[1]
    assert sorted(mine[0] + mine[1]) == sorted(repr(g) for g in single["scored"])
    if kind == "evolution":  # its candidates are distinct (a cache): no candidate scored on both ranks
        assert not set(mine[0]) & set(mine[1])
    key = "cache" if kind == "evolution" else "scores"
    assert ranks[0][key] == ranks[1][key] == single[key]  # every score gathered on every rank


# ---- evaluation split over ranks ---------------------------------------------------------------------
def _val_set(root: Path):
    from nas.data.coco import CocoTopDown
    return CocoTopDown(root, "val2017", input_size=(64, 48), heatmap_size=(16, 12), train=False)


def _predict(root: Path, sharded: bool) -> dict:
    from nas.engine.runtime import make_loader
    from nas.pose.predict import predict_coco
    from nas.data.keypoints import COCO_FLIP_PAIRS
    data = _val_set(root)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 17, 3, padding=1), nn.AvgPool2d(4))
    loader = make_loader(data, 2, False, 0, shard=sharded)
    preds = predict_coco(model, loader, "cpu", COCO_FLIP_PAIRS, flip=True, nms="oks",
                         gather_total=len(data) if sharded else None)
    return {"preds": preds, "scores": data.evaluate(preds), "local": len(loader.sampler)}


def _eval_worker(rank: int, port: int, out: str, root: str) -> None:
    _join(rank, port)
    from nas.engine import distributed
    torch.save(_predict(Path(root), True), Path(out) / f"rank{rank}.pt")
    distributed.shutdown(wait=True)


@pytest.mark.slow
def test_an_evaluation_split_over_two_ranks_gives_the_one_process_predictions_and_ap(tmp_path):
    from tests.test_bad_input import _pose, write_coco
    root = write_coco(tmp_path, [_pose(i) for i in range(5)], corrupt=())  # 5 people: 3 + 2 over the ranks
    ranks = _spawn(_eval_worker, tmp_path, str(root))
    single = _predict(root, False)
    assert [r["local"] for r in ranks] == [3, 2]  # each sample once, no padding
    assert len(single["preds"]) == 5
    for r in ranks:
        assert r["preds"] == single["preds"]  # the same entries in the same order, after the NMS
        assert r["scores"] == single["scores"]


# ---- the entry points under torchrun -----------------------------------------------------------------
def _torchrun(cache: Path, cwd: Path, module: str, *args: str):
    import subprocess
    import sys
    from tests.helpers import run_env
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_free_port()}",
           "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=run_env(cache), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_torchrun_search_and_retrain_write_one_run_directory_and_evaluate_like_one_process(tmp_path):
    import json
    import subprocess
    import sys
    from tests.helpers import TINY_DATA, TINY_SPACE, module_cmd, run_env
    cache = tmp_path / "cache"
    search = _torchrun(cache, tmp_path, "nas.search", *TINY_DATA, *TINY_SPACE, "batch_size=2", "epochs=2",
                       "max_steps_per_epoch=3", "strategy.warmup_epochs=0", "device=cpu")
    assert search.returncode == 0, search.stderr[-3000:]
    runs = list((tmp_path / "runs" / "search").iterdir())
    assert len(runs) == 1  # both ranks resolved the same ${run_stamp} directory
    run = runs[0]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]  # each epoch once: rank 0 alone writes
    assert json.loads((run / "batch.json").read_text())["global_batch"] == 4  # 2 per process x 2
    assert search.stdout.count("genotype written to") == 1
    genotype = run / "genotype.json"
    assert json.loads(genotype.read_text())["provenance"]["processes"] == 2

    retrain = _torchrun(cache, tmp_path, "nas.retrain", str(genotype), *TINY_DATA, "epochs=1", "batch_size=2",
                        "device=cpu", f"run_dir={tmp_path / 'r'}")
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    again = subprocess.run(module_cmd("nas.evaluate", str(tmp_path / "r" / "best.pt"), *TINY_DATA[:4],
                                      "num_workers=0", "device=cpu"),
                           cwd=tmp_path, env=run_env(cache), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    single = json.loads((tmp_path / "r" / "eval_metrics.json").read_text())
    assert single["AP"] == results["AP"] and single["AR"] == results["AR"]
    # the gathered predictions are those of one process, entry for entry (the AP of so short a run is
    # near 0, so the predictions are the stronger check)
    split = json.loads((tmp_path / "r" / "best_predictions.json").read_text())
    whole = json.loads((tmp_path / "r" / "eval_predictions.json").read_text())
    assert len(split) == len(whole) > 0
    for a, b in zip(split, whole):
        assert a["image_id"] == b["image_id"] and a["score"] == pytest.approx(b["score"], abs=1e-6)
        assert a["keypoints"] == pytest.approx(b["keypoints"], abs=1e-4)


@pytest.mark.slow
def test_a_two_task_submitit_job_is_one_data_parallel_run(tmp_path):
    """hydra/launcher=submitit_local with tasks_per_node=2: the two tasks join one process group from
    submitit's environment (as on SLURM), rank 0 alone writes the job's run directory."""
    import json
    import subprocess
    from tests.helpers import TINY_DATA, TINY_SPACE, module_cmd, run_env
    env = {k: v for k, v in run_env(tmp_path / "cache").items() if not k.startswith(("SLURM_", "RANK", "WORLD"))}
    sweep = subprocess.run(module_cmd("nas.search", "-m", *TINY_DATA, *TINY_SPACE, "batch_size=2", "epochs=2",
                                      "max_steps_per_epoch=3", "strategy=darts", "strategy.warmup_epochs=0",
                                      "device=cpu", "hydra/launcher=submitit_local",
                                      "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path / 'sw'}"),
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 0, (sweep.stdout + sweep.stderr)[-3000:]
    run = tmp_path / "sw" / "0"
    assert json.loads((run / "batch.json").read_text())["processes"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert (run / "genotype.json").is_file()


def _nan_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    from nas.engine import distributed
    from nas.engine.guards import NonFiniteLossError, check_finite
    try:
        check_finite(torch.tensor(float("nan") if rank == 1 else 0.5), "training loss", 7)
        result = "went on"
    except NonFiniteLossError as err:
        result = str(err)
    # the Trainer's way: the all-reduced mean (NaN when one rank's loss is), checked without a collective
    mean = distributed.mean_scalar(float("inf") if rank == 1 else 0.5, torch.device("cpu"))
    try:
        check_finite(torch.tensor(mean), "training loss (mean over ranks)", 8, agreed=True)
        trainer = "went on"
    except NonFiniteLossError as err:
        trainer = str(err)
    torch.save({"result": result, "trainer": trainer}, Path(out) / f"rank{rank}.pt")
    distributed.shutdown(wait=True)


def test_a_nan_loss_on_one_rank_stops_every_rank_at_that_step(tmp_path):
    """Rank 1's loss is NaN, rank 0's is finite: both stop (a rank going on would wait in its next
    all-reduce for a partner that is gone), each saying why."""
    ranks = _spawn(_nan_worker, tmp_path)
    assert ranks[0]["result"].startswith("training loss (on another rank) is nan at step 7")
    assert ranks[1]["result"].startswith("training loss is nan at step 7")
    assert all(r["trainer"].startswith("training loss (mean over ranks) is inf at step 8") for r in ranks)
