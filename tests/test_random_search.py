"""Random search (plain and weight-sharing) and the held-out accuracy estimator it scores with."""
from __future__ import annotations

import functools
import io
import json

import pytest
import torch
from torch import nn

from estimators.accuracy import recalibrate_bn
from nas.data.coco import CocoTopDown
from nas.engine.guards import NonFiniteLossError
from nas.metrics.coco_eval import evaluate_keypoints
from nas.pose.loss import KeypointMSELoss
from nas.spaces import build_space
from strategies.random_search import RandomSearch
from tests.helpers import NaNGradAfter


def test_recalibrated_bn_statistics_are_the_plain_average_over_the_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    batches = [torch.randn(5, 3, 6, 6) * (i + 1) + i for i in range(3)]
    net[1].running_mean.fill_(7.0)  # stale statistics that must not survive
    recalibrate_bn(net, batches)
    with torch.no_grad():
        feats = [net[0](b) for b in batches]
    # mean over batches of each batch's per-channel mean / unbiased variance (equal batch sizes)
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    variances = torch.stack([f.transpose(0, 1).reshape(4, -1).var(dim=1) for f in feats]).mean(0)
    assert torch.allclose(net[1].running_mean, means, atol=1e-5)
    assert torch.allclose(net[1].running_var, variances, rtol=1e-4)
    assert net[1].momentum == 0.1 and net.training  # settings restored


def test_scoring_on_an_image_subset_ignores_the_other_images(coco_set):
    data = CocoTopDown(coco_set.root, coco_set.split)
    ids = sorted({s.image_id for s in data.samples})
    chosen = ids[:2]
    results = [{"image_id": s.image_id, "category_id": 1, "keypoints": s.keypoints.reshape(-1).tolist(),
                "score": 1.0} for s in data.samples if s.image_id in chosen]
    assert evaluate_keypoints(data.coco, results, image_ids=chosen)["AP"] == pytest.approx(1.0)
    assert evaluate_keypoints(data.coco, results)["AP"] < 0.9  # the unpredicted people count as missed


# ---- the strategy, driven directly on a tiny space with a stand-in estimator ---------------------

def _batches(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(2, 3, 32, 24, generator=g), "target": torch.rand(2, 17, 8, 6, generator=g),
             "target_weight": torch.ones(2, 17, 1)} for _ in range(n)]


def _weight_score(model: nn.Module, genotype=None, calibrate: bool = False) -> dict[str, float]:
    """A stand-in estimator that depends on every trained weight (so resumption errors show)."""
    return {"AP": float(sum(p.detach().double().abs().sum() for p in model.parameters())) % 1.0}


def _strategy(**kw) -> RandomSearch:
    torch.manual_seed(0)
    space = build_space("plain_conv", {})
    args = dict(space=space, supernet=space.supernet(), criterion=KeypointMSELoss(),
                optimizer=functools.partial(torch.optim.Adam, lr=1e-3), epochs=1, steps_per_epoch=1,
                accuracy=_weight_score, num_samples=3, steps_per_candidate=2, seed=0)
    return RandomSearch(**{**args, **kw})


def _run(strategy: RandomSearch, epochs: range, data: list[dict]) -> None:
    for epoch in epochs:
        for step in range(strategy.schedule()[1]):
            batch = data[epoch * 2 + step]
            strategy.step(batch, batch)
        strategy.end_epoch()


def test_plain_random_search_trains_each_candidate_its_budget_and_keeps_the_best():
    strategy, data = _strategy(), _batches(6)
    assert strategy.schedule() == (3, 2)  # one epoch per candidate, steps_per_candidate steps
    _run(strategy, range(3), data)
    assert len(strategy.scores) == 3
    best = max(range(3), key=lambda i: strategy.scores[i]["AP"])
    result = strategy.result()
    assert result.genotype == strategy.candidates[best]["genotype"]
    assert result.provenance["search_score"]["AP"] == strategy.scores[best]["AP"]
    assert len({json.dumps(c["genotype"]) for c in strategy.candidates}) > 1  # really sampled


def test_plain_random_search_resumes_mid_candidate_exactly():
    data = _batches(6)
    whole = _strategy()
    _run(whole, range(3), data)
    first = _strategy()
    first.step(data[0], data[0])  # killed after one of candidate 1's two steps
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # through a checkpoint, as the search loop does
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    second = _strategy()
    second.load_state_dict(state)
    second.step(data[1], data[1])
    second.end_epoch()
    _run(second, range(1, 3), data)
    assert [s["AP"] for s in second.scores] == [s["AP"] for s in whole.scores]


def test_weight_sharing_needs_a_supernet_with_paths():
    from nas.errors import UserError
    with pytest.raises(UserError, match="strategy=random"):
        _strategy(weight_sharing=True)


@pytest.mark.parametrize("weight_sharing", [False, True])
def test_a_nan_gradient_with_a_finite_loss_stops_the_step_and_leaves_the_weights(weight_sharing):
    extra = {}
    if weight_sharing:  # a space whose supernet trains paths
        space = build_space("darts_cells", dict(init_channels=4, layers=3, steps=2, reductions=1))
        extra = dict(space=space, supernet=space.supernet(), weight_sharing=True, supernet_steps=4)
    strategy, data = _strategy(criterion=NaNGradAfter(after=1), **extra), _batches(2)
    strategy.step(data[0], data[0])  # a good step: the weights and Adam's moments move
    before = {k: v.detach().clone() for k, v in strategy.net.named_parameters()}  # not BN buffers
    moments = [v.clone() for state in strategy.opt.state.values() for v in state.values()]
    with pytest.raises(NonFiniteLossError, match="gradient"):
        strategy.step(data[1], data[1])
    assert all(torch.equal(before[k], v) for k, v in strategy.net.named_parameters())
    assert all(torch.equal(a, b) for a, b in zip(moments, [v for st in strategy.opt.state.values()
                                                         for v in st.values()]))
