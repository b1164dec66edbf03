"""The retrain trainer's outputs: best checkpoint, predictions and metrics belong to the same epoch, and a
non-finite gradient stops the run before it can touch the weights or the last checkpoint."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from nas.engine.checkpoint import load_checkpoint
from nas.engine.guards import NonFiniteLossError
from nas.engine.train_loop import BEST_PREDICTIONS, LAST_PREDICTIONS, Trainer
from nas.pose.loss import KeypointMSELoss


def _batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    """`n` fixed batches: (2, 3, 4, 4) images, (2, 2, 4, 4) heatmap targets, all joints weighted."""
    gen = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(2, 3, 4, 4, generator=gen), "target": torch.rand(2, 2, 4, 4, generator=gen),
             "target_weight": torch.ones(2, 2, 1)} for _ in range(n)]


def _trainer(model: nn.Module, epochs: int, grad_clip: float | None = None) -> Trainer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Trainer(model, KeypointMSELoss(), optimizer, epochs, 2, torch.device("cpu"), grad_clip=grad_clip)


def _weight_sum(model: nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


class ScriptedEvaluation:
    """Returns the next of `scores` as AP; its 'predictions' record the weights they were made with."""

    def __init__(self, scores: list[float]):
        self.scores, self.calls = scores, 0

    def __call__(self, model: nn.Module) -> tuple[dict[str, float], list[dict]]:
        ap = self.scores[self.calls]
        self.calls += 1
        return {"AP": ap}, [{"image_id": 1, "call": self.calls - 1, "weight_sum": _weight_sum(model)}]


def test_best_predictions_belong_to_best_pt_and_last_is_reported(tmp_path):
    # AP by epoch 0.2, 0.6, 0.4: the best epoch (1) is not the last (2).
    torch.manual_seed(0)
    model = nn.Conv2d(3, 2, 1)
    result = _trainer(model, epochs=3).fit(_batches(), ScriptedEvaluation([0.2, 0.6, 0.4]), 1, tmp_path, None)
    assert result["best"] == {"AP": 0.6, "epoch": 1} and result["last"] == {"AP": 0.4, "epoch": 2}
    best_preds = json.loads((tmp_path / BEST_PREDICTIONS).read_text())
    last_preds = json.loads((tmp_path / LAST_PREDICTIONS).read_text())
    assert best_preds[0]["call"] == 1 and last_preds[0]["call"] == 2
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 1 and best["scores"] == {"AP": 0.6}
    best_sum = float(sum(v.double().sum() for v in best["model"].values()))
    assert best_sum == pytest.approx(best_preds[0]["weight_sum"], abs=1e-9)  # same weights
    assert last_preds[0]["weight_sum"] == pytest.approx(_weight_sum(model), abs=1e-9)
    assert best_sum != pytest.approx(_weight_sum(model))  # the weights did move after the best epoch
    assert not (tmp_path / "predictions.json").exists()  # no file whose epoch is ambiguous
    # a resume of the finished run reports the same best and last (both are in last.pt)
    again = _trainer(nn.Conv2d(3, 2, 1), epochs=3).fit(_batches(), ScriptedEvaluation([]), 1, tmp_path,
                                                       tmp_path / "last.pt")
    assert again == result


class NaNGradFrom:
    """Tensor hook: the gradient passes unchanged for the first `first` backward passes, then is NaN."""

    def __init__(self, first: int):
        self.first, self.calls = first, 0

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return grad if self.calls <= self.first else torch.full_like(grad, math.nan)


@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_nan_gradient_with_finite_loss_stops_before_the_step(tmp_path, grad_clip):
    # Epoch 0 (2 steps) trains and writes last.pt; the first step of epoch 1 has a finite loss but a NaN
    # gradient on the bias only. Without the guard, clipping would spread the NaN over every weight and
    # SGD would write it into the model (and the next last.pt).
    torch.manual_seed(0)
    model = nn.Conv2d(3, 2, 1)
    model.bias.register_hook(NaNGradFrom(first=2))
    trainer = _trainer(model, epochs=2, grad_clip=grad_clip)
    with pytest.raises(NonFiniteLossError, match="gradient of the network"):
        trainer.fit(_batches(), lambda net: ({"AP": 0.1}, []), 0, tmp_path, None)  # no evaluation
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["epoch"] == 0 and trainer.step_count == 2  # the bad step was not counted
    for name, value in model.state_dict().items():
        assert torch.isfinite(saved["model"][name]).all(), name
        assert torch.equal(value, saved["model"][name]), name  # the weights did not move


# ---------------------------------------------------------------- the same, through python -m nas.retrain
# the criterion NaNGradAfter (finite loss, NaN gradient from a given call) is in tests/helpers.py


def _retrain(tmp_path, *extra: str):
    """Tiny synthetic retrain, 2 epochs, evaluated after each; its 15 training instances in batches of 8
    (drop_last) make one step an epoch."""
    import subprocess
    from tests.helpers import REPO_ROOT, TINY_DATA, module_cmd, run_env
    return subprocess.run(module_cmd("nas.retrain", "genotypes/weak_plain_conv.json", *TINY_DATA, "epochs=2",
                                     "batch_size=8", "eval_every=1", f"run_dir={tmp_path / 'r'}", *extra),
                          capture_output=True, text=True, timeout=300, env=run_env(tmp_path), cwd=REPO_ROOT)


@pytest.mark.slow
def test_retrain_nan_gradient_exits_3_with_last_pt_of_the_good_epoch(tmp_path):
    # one step an epoch: the second step (epoch 1) has a finite loss and a NaN gradient
    proc = _retrain(tmp_path, "criterion._target_=tests.helpers.NaNGradAfter",
                    "~criterion.use_target_weight", "+criterion.after=1")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "gradient of the network is nan at step 1" in proc.stderr and "Traceback" not in proc.stderr
    saved = load_checkpoint(tmp_path / "r" / "last.pt")
    assert saved["epoch"] == 0 and saved["step"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert not (tmp_path / "r" / "results.json").exists()


@pytest.mark.slow
def test_retrain_results_hold_best_and_last_with_their_predictions(tmp_path):
    proc = _retrain(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "r"
    results = json.loads((run / "results.json").read_text())
    best = load_checkpoint(run / "best.pt")
    assert results["best_epoch"] == best["epoch"]
    assert {k: results[k] for k in best["scores"]} == best["scores"]  # flat keys: best.pt's epoch
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert results["last"]["epoch"] == records[-1]["epoch"] == 1
    assert results["last"]["AP"] == records[-1]["AP"]
    assert "validation split these metrics are computed on" in results["model_selection"]
    assert results["predictions"] == {"best": BEST_PREDICTIONS, "last": LAST_PREDICTIONS}
    best_preds = json.loads((run / BEST_PREDICTIONS).read_text())
    last_preds = json.loads((run / LAST_PREDICTIONS).read_text())
    assert best_preds and len(best_preds) == len(last_preds)
    assert (best_preds == last_preds) == (results["best_epoch"] == 1)


def test_an_epoch_ends_after_steps_per_epoch_steps(tmp_path):
    """retrain's max_steps_per_epoch reaches the trainer as steps_per_epoch: 5 batches, 2 steps an epoch,
    2 epochs -> 4 optimizer steps, and the cosine schedule spans exactly those 4 (lr back to lr_min 0)."""
    model = nn.Conv2d(3, 2, 1)
    trainer = _trainer(model, epochs=2)  # steps_per_epoch=2
    trainer.fit(_batches(5), ScriptedEvaluation([0.1, 0.2]), 1, tmp_path, None)
    assert trainer.step_count == 4
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
