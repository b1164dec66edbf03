"""First-order DARTS on a tiny supernet: what moves when, and exact resumability of its state."""
from __future__ import annotations

import copy
import functools
import math

import pytest
import torch

from nas.engine.guards import NonFiniteLossError
from nas.errors import UserError
from nas.pose.loss import KeypointMSELoss
from search_spaces.darts_cells import DartsCellsSpace
from strategies.darts import Darts
from tests.helpers import NaNAfter


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(2, 3, 32, 32, generator=g),
            "target": torch.rand(2, 17, 8, 8, generator=g),
            "target_weight": torch.ones(2, 17, 1)}


def _strategy(criterion=None, warmup_epochs: float = 0.0, seed: int = 0, unrolled: bool = False,
              arch_lr: float = 3e-3, partial_channels: int | None = None) -> Darts:
    torch.manual_seed(seed)
    space = DartsCellsSpace(init_channels=4, layers=2, steps=2, reductions=1,
                            partial_channels=partial_channels)
    return Darts(space, space.supernet(), criterion or KeypointMSELoss(),
                 functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=3e-4),
                 functools.partial(torch.optim.Adam, lr=arch_lr), epochs=2, steps_per_epoch=2,
                 warmup_epochs=warmup_epochs, unrolled=unrolled)


def _alphas(s: Darts) -> list[torch.Tensor]:
    return [a.detach().clone() for a in s.alphas]


def _adam_first_move(grad: torch.Tensor, lr: float = 3e-3, eps: float = 1e-8) -> torch.Tensor:
    """Adam's first step (Kingma & Ba, Algorithm 1): the bias-corrected moments are g and g^2, so
    each entry moves by lr * g / (|g| + eps): lr * sign(g) for large g, less below eps."""
    return lr * grad / (grad.abs() + eps)


def test_step_moves_weights_and_architecture():
    s = _strategy()
    a0, w0 = _alphas(s), [w.detach().clone() for w in s.weights]
    out = s.step(_batch(0), _batch(1))
    assert {"loss", "arch_loss"} <= set(out)
    assert any(not torch.equal(a, b) for a, b in zip(a0, _alphas(s)))
    assert any(not torch.equal(a, b.detach()) for a, b in zip(w0, s.weights))


def test_warmup_leaves_the_architecture_alone():
    s = _strategy(warmup_epochs=1.0)  # 2 steps per epoch -> 2 weight-only steps
    a0 = _alphas(s)
    s.step(_batch(0), _batch(1))
    s.step(_batch(2), _batch(3))
    assert all(torch.equal(a, b) for a, b in zip(a0, _alphas(s)))
    s.step(_batch(4), _batch(5))
    assert any(not torch.equal(a, b) for a, b in zip(a0, _alphas(s)))


@pytest.mark.parametrize("partial_channels", [None, 2])  # 2: PC-DARTS, the betas are included
def test_arch_gradient_comes_from_the_held_out_batch_only(partial_channels):
    """First order: the alpha update is Adam on d L_val / d alpha at the current weights."""
    s = _strategy(partial_channels=partial_channels)
    ref = copy.deepcopy(s.supernet)
    val = _batch(1)
    loss = KeypointMSELoss()(ref(val["image"]), val["target"], val["target_weight"])
    expected = torch.autograd.grad(loss, ref.arch_parameters())
    s._arch_step(_batch(0), val)
    for a_new, a_old, g in zip(s.alphas, ref.arch_parameters(), expected):
        moved = (a_old - a_new).detach()
        assert torch.allclose(moved, _adam_first_move(g), rtol=1e-3, atol=1e-9)
    # Many gradients at init are below Adam's eps, yet the training batch would move them otherwise:
    train = _batch(0)
    wrong = torch.autograd.grad(KeypointMSELoss()(ref(train["image"]), train["target"],
                                                  train["target_weight"]), ref.arch_parameters())
    assert not all(torch.allclose(_adam_first_move(g), _adam_first_move(h), rtol=1e-3, atol=1e-9)
                   for g, h in zip(expected, wrong))


@pytest.mark.parametrize("unrolled", [False, True])
def test_state_dict_resumes_bit_exactly(unrolled):
    """Saved after two steps (the first weight-only: warmup of 1 step), so the step counter, the
    momentum buffers, Adam's moments and the schedule all shape the steps after the resume: leaving
    any of them out of the state makes the resumed run differ."""
    s1 = _strategy(warmup_epochs=0.5, unrolled=unrolled)
    s1.step(_batch(0), _batch(1))
    s1.step(_batch(2), _batch(3))
    saved_model = copy.deepcopy(s1.supernet.state_dict())
    saved_state = copy.deepcopy(s1.state_dict())
    s2 = _strategy(seed=123, warmup_epochs=0.5, unrolled=unrolled)  # other init, then all restored
    s2.supernet.load_state_dict(saved_model)
    s2.load_state_dict(saved_state)
    for s in (s1, s2):
        s.step(_batch(4), _batch(5))
        s.step(_batch(6), _batch(7))  # the schedule's state shows from the second step on
    a, b = s1.supernet.state_dict(), s2.supernet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optimizer", [
    functools.partial(torch.optim.Adam, lr=1e-3),
    functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True),
    functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, dampening=0.1)])
def test_second_order_refuses_a_weight_optimizer_its_virtual_step_does_not_replay(optimizer):
    space = DartsCellsSpace(init_channels=4, layers=2, steps=2, reductions=1)
    make = functools.partial(Darts, space, space.supernet(), KeypointMSELoss(), optimizer,
                             functools.partial(torch.optim.Adam, lr=3e-3), epochs=1, steps_per_epoch=1)
    make(unrolled=False)  # first order never replays the weight step
    with pytest.raises(UserError, match="unrolled"):
        make(unrolled=True)


def test_non_finite_loss_stops_before_the_update():
    s = _strategy(criterion=NaNAfter(after=1), warmup_epochs=1.0)
    s.step(_batch(0), _batch(1))
    before = [w.detach().clone() for w in s.weights]
    with pytest.raises(NonFiniteLossError, match="training loss is nan"):
        s.step(_batch(2), _batch(3))
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, s.weights))


@pytest.mark.parametrize("unrolled", [False, True])
def test_pc_darts_betas_get_finite_nonzero_gradients_and_move(unrolled):
    """PC-DARTS edge normalisation: every beta entry (a softmax logit over a node's incoming
    edges) gets a finite, nonzero gradient from an architecture step and is moved by it."""
    s = _strategy(unrolled=unrolled, partial_channels=2)
    betas = dict(s.supernet.betas)
    assert len(betas) == 3 and all(any(b is a for a in s.alphas) for b in betas.values())
    before = {k: b.detach().clone() for k, b in betas.items()}
    s._arch_step(_batch(0), _batch(1))
    for kind, b in betas.items():
        assert b.grad is not None and torch.isfinite(b.grad).all(), kind
        assert (b.grad != 0).all(), (kind, b.grad)
        moved = before[kind] - b.detach()
        assert (moved != 0).all() and torch.allclose(moved, _adam_first_move(b.grad), rtol=1e-3), kind


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


@pytest.mark.parametrize("after_weight_step", [False, True])
def test_second_order_arch_gradient_matches_exact_autograd(after_weight_step):
    """unrolled=True: the finite-difference DARTS gradient equals the exact one-step unrolled
    gradient d/d_alpha L_val(w', alpha) with w' = w - xi (momentum buf + grad_w L_train + wd w),
    computed here independently with double backprop (buf is a constant, as in DARTS).

    After a weight step the momentum buffer is not empty: buf = g0 + wd w0 (SGD's first step sets it
    to the first step's gradient) and xi is the cosine schedule's second value, xi0 / 2.

    Tolerance: the only approximation is the central difference of the Hessian-vector product, a
    step of length fd_eps = 1e-3 in weight space, so its truncation error is O(fd_eps^2) = 1e-6 in
    relative terms for curvature of order one (float64 rounding adds ~1e-16 / fd_eps = 1e-13). The
    measured error is 4e-10 at step 0 and 2e-10 after a weight step (this ReLU net is piecewise
    linear, only BN and the softmax over ops are curved); the errors of the two defects the test
    must catch, a first-order gradient and a virtual step without the momentum term, are checked
    below to be more than 10x the error allowed."""
    from torch.func import functional_call
    torch.manual_seed(0)
    space = DartsCellsSpace(init_channels=4, layers=2, steps=2, reductions=1)
    net = space.supernet().double()
    xi0, wd, momentum = 0.1, 3e-4, 0.9
    s = Darts(space, net, KeypointMSELoss(),
              functools.partial(torch.optim.SGD, lr=xi0, momentum=momentum, weight_decay=wd),
              functools.partial(torch.optim.Adam, lr=0.0), epochs=2, steps_per_epoch=1, unrolled=True,
              fd_eps=1e-3, warmup_epochs=1.0, grad_clip=1e9)  # step 0: weights only, no clipping
    train, val, first = ({k: v.double() for k, v in _batch(i).items()} for i in (0, 1, 2))
    named = dict(net.named_parameters())
    alphas = {n: p for n, p in named.items() if n.startswith("alphas.")}
    weights = {n: p.detach().clone().requires_grad_() for n, p in named.items() if n not in alphas}

    def loss(w, batch):
        out = functional_call(net, {**w, **alphas}, (batch["image"],))
        return KeypointMSELoss()(out, batch["target"], batch["target_weight"])

    def grad_w(w, batch, **kwargs):
        grads = torch.autograd.grad(loss(w, batch), list(w.values()), allow_unused=True, **kwargs)
        return {n: torch.zeros_like(w[n]) if g is None else g for n, g in zip(w, grads)}

    buf, xi = {n: torch.zeros_like(w) for n, w in weights.items()}, xi0
    if after_weight_step:
        buf = {n: g + wd * weights[n].detach() for n, g in grad_w(weights, first).items()}
        weights = {n: (w - xi0 * buf[n]).detach().requires_grad_() for n, w in weights.items()}
        s.step(first, val)  # warmup step: a weight step only
        assert torch.allclose(_flat(weights.values()), _flat(s.weights), rtol=0, atol=1e-12)
        xi = xi0 * (1 + math.cos(math.pi * 1 / 2)) / 2  # cosine annealing to 0 over 2 steps
        assert s.w_opt.param_groups[0]["lr"] == pytest.approx(xi)

    def exact(with_momentum: bool) -> torch.Tensor:
        g = grad_w(weights, train, create_graph=True)
        stepped = {n: w - xi * (momentum * buf[n] * with_momentum + g[n] + wd * w)
                   for n, w in weights.items()}
        return _flat(torch.autograd.grad(loss(stepped, val), list(alphas.values())))

    s._arch_step(train, val)  # Adam at lr 0 leaves alpha in place and its .grad readable
    approx, want = _flat(a.grad for a in s.alphas), exact(True)
    rel = float((approx - want).norm() / want.norm())
    assert rel < 1e-6, rel
    first_order = _flat(torch.autograd.grad(loss(weights, val), list(alphas.values())))
    assert (first_order - want).norm() / want.norm() > 1e-5  # the test tells the orders apart
    if after_weight_step:
        assert (exact(False) - want).norm() / want.norm() > 1e-5  # and sees the momentum term


def test_the_default_architecture_weight_decay_does_not_pin_the_alphas_near_zero():
    """The heatmap loss gives the alphas gradients of ~1e-5. With DARTS's weight decay 1e-3 added to the
    gradient (coupled), Adam settles where 1e-3 * alpha cancels it: alpha ~ 1e-5 / 1e-3 = 0.01, whatever
    the learning rate. The default architecture optimizer must let a steady gradient of that size move
    an alpha by about lr per step instead: 300 steps at lr 1e-2 -> about 3 (decoupled decay removes only
    lr * 1e-3 * alpha <= 3e-5 per step)."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from nas.config import register
    register()  # the schemas search.yaml names
    with initialize_config_module("conf", version_base="1.3"):
        cfg = compose("search")
    alpha = torch.nn.Parameter(torch.zeros(1))
    opt = instantiate(cfg.strategy.arch_optimizer)([alpha])
    for _ in range(300):
        alpha.grad = torch.full_like(alpha, -1e-5)
        opt.step()
    assert alpha.item() > 2.5, alpha.item()
