"""darts_cells extras: PC-DARTS partial channels with edge normalisation, path mode, arch_weights.

Expected values are worked out by hand in the comments next to them.
"""
from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from nas.genotype import Genotype, GenotypeError
from nas.spaces import resolve
from search_spaces.cells import MixedOp, SearchCell, channel_shuffle
from search_spaces.darts_cells import DartsCellsSpace, DartsSupernet
from tests.helpers import REPO_ROOT, TINY_DATA, TINY_SPACE, module_cmd, run_env

TINY = dict(init_channels=4, layers=3, steps=2, reductions=1)
# node 0 <- inputs 0, 1; node 1 <- input 1 and node 0 (input 0 of node 1 is left out)
PATH = [["conv_3x3", 0], ["skip_connect", 1], ["sep_conv_3x3", 1], ["dil_conv_3x3", 2]]


def _images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 48, generator=torch.Generator().manual_seed(7))


def _path_genotype() -> Genotype:
    return Genotype(space="darts_cells", genotype={k: [list(e) for e in PATH]
                                                   for k in ("normal", "reduce", "fusion")})


# ---- channel shuffle and the partial-channel mixed op --------------------------------------------

def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    # 2 groups [0 1 2][3 4 5] -> take one from each group in turn
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    # 3 groups [0 1][2 3][4 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


@pytest.mark.parametrize("stride, size", [(1, (7, 5)), (2, (4, 3))])  # stride 2 rounds up, as the ops do
def test_partial_mixed_op_keeps_the_shape(stride, size):
    from search_spaces.ops import PRIMITIVES
    op = MixedOp(8, stride, PRIMITIVES, partial=4)
    weights = torch.softmax(torch.randn(len(PRIMITIVES)), dim=0)
    assert op(torch.randn(2, 8, 7, 5), weights).shape == (2, 8, *size)
    conv = op.ops[PRIMITIVES.index("conv_3x3")][1]
    assert conv.weight.shape == (2, 2, 3, 3)  # the ops see C/K = 2 channels


def test_bypass_channels_pass_unchanged_stride_1():
    op = MixedOp(8, 1, ("none", "skip_connect"), partial=4)
    x = torch.randn(2, 8, 3, 3)
    out = op(x, torch.tensor([0.3, 0.7]))
    # before the shuffle: [0.7 x0, 0.7 x1, x2, ..., x7]; 4 groups of 2 -> order 0 2 4 6 1 3 5 7
    before = torch.cat([0.7 * x[:, :2], x[:, 2:]], dim=1)
    for position, channel in enumerate([0, 2, 4, 6, 1, 3, 5, 7]):
        assert torch.allclose(out[:, position], before[:, channel])


def test_bypass_channels_are_max_pooled_2x2_on_stride_2():
    op = MixedOp(8, 2, ("none", "skip_connect"), partial=4)
    x = (torch.arange(9.0).view(1, 1, 3, 3) + 10 * torch.arange(8.0).view(1, 8, 1, 1))
    out = op(x, torch.tensor([1.0, 0.0]))  # all weight on `none`: the op channels are zero
    # 2x2 windows with ceil mode over [[0 1 2][3 4 5][6 7 8]]: maxima 4, 5, 7, 8 (+10c)
    pooled = torch.tensor([[4.0, 5.0], [7.0, 8.0]])
    for position, channel in enumerate([0, 2, 4, 6, 1, 3, 5, 7]):
        expected = torch.zeros(2, 2) if channel < 2 else pooled + 10 * channel
        assert torch.equal(out[0, position], expected), (position, channel)


# ---- betas: architecture parameters, decoding, K validation --------------------------------------

def test_betas_are_architecture_parameters_only():
    net = DartsCellsSpace(**TINY, partial_channels=2).supernet()
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    betas = {id(p) for p in net.betas.values()}
    assert len(betas) == 3 and betas <= arch and not betas & weights
    assert [b.shape for b in net.betas.values()] == [(5,)] * 3  # steps=2: 2 + 3 edges
    assert arch | weights == {id(p) for p in net.parameters()} and not arch & weights


def _set_logits(params: torch.nn.ParameterDict, probs: list) -> None:
    """softmax(log p) = p when p sums to 1 (per softmax group)."""
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.tensor(probs).log())


def test_decode_ranks_inputs_by_beta_times_op_weight():
    prims = ("none", "skip_connect", "conv_3x3")
    space = DartsCellsSpace(**TINY, primitives=prims, partial_channels=2)
    net = space.supernet()
    _set_logits(net.alphas, [
        [0.2, 0.3, 0.5],   # node 0 <- input 0: conv
        [0.1, 0.7, 0.2],   # node 0 <- input 1: skip
        [0.1, 0.1, 0.8],   # node 1 <- input 0: conv 0.8, x beta 0.2 = 0.16 (dropped)
        [0.1, 0.6, 0.3],   # node 1 <- input 1: skip 0.6, x beta 0.3 = 0.18
        [0.5, 0.1, 0.4],   # node 1 <- node 0:  conv 0.4, x beta 0.5 = 0.20
    ])
    _set_logits(net.betas, [0.5, 0.5, 0.2, 0.3, 0.5])  # per node: [0.5 0.5], [0.2 0.3 0.5]
    expected = [["conv_3x3", 0], ["skip_connect", 1], ["skip_connect", 1], ["conv_3x3", 2]]
    assert space.decode(net).genotype == {k: expected for k in ("normal", "reduce", "fusion")}
    # the alphas alone (plain DARTS) would keep inputs 0 and 1 of node 1 (0.8 and 0.6)
    plain = DartsCellsSpace(**TINY, primitives=prims)
    plain_net = plain.supernet()
    plain_net.alphas.load_state_dict(net.alphas.state_dict())
    assert plain.decode(plain_net).genotype["normal"][2:] == [["conv_3x3", 0], ["skip_connect", 1]]


def test_a_k_that_does_not_divide_the_channels_is_refused_naming_it():
    # C=6 with one reduction: cells of 6 and 12 channels; 4 divides neither, 2 3 6 divide both
    with pytest.raises(ValueError, match=r"partial_channels=4 .*\[2, 3, 6\]"):
        DartsCellsSpace(init_channels=6, layers=3, steps=2, reductions=1, partial_channels=4)
    with pytest.raises(ValueError, match="partial_channels=3"):
        DartsSupernet(4, 3, 2, 1, 17, ("none", "conv_3x3"), partial_channels=3)


def test_no_partial_channels_is_plain_darts():
    """K=None and K=1: no betas, full-width ops, the three alphas as the only arch parameters,
    and (same seed) the same parameters and outputs."""
    nets = []
    for k in (None, 1):
        torch.manual_seed(0)
        nets.append(DartsCellsSpace(**TINY, partial_channels=k).supernet())
    for net in nets:
        assert net.betas is None and not any("betas" in n for n, _ in net.named_parameters())
        assert [tuple(a.shape) for a in net.arch_parameters()] == [(5, 9)] * 3
        cell = net.cells[0]  # normal cell, C = 4: conv_3x3 weight (4, 4, 3, 3)
        assert cell.edges[0].ops[8][1].weight.shape == (4, 4, 3, 3)
    a, b = (dict(n.state_dict()) for n in nets)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = _images()
    assert torch.equal(nets[0](x), nets[1](x))


# ---- path mode -------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [None, 2])
def test_path_mode_runs_and_trains_only_the_chosen_ops(k):
    torch.manual_seed(0)
    net = DartsCellsSpace(**TINY, partial_channels=k).supernet()
    edges_run, ops_run = set(), set()
    for cell in (m for m in net.modules() if isinstance(m, SearchCell)):
        for e, edge in enumerate(cell.edges):
            edge.register_forward_hook(lambda m, i, o, e=e: edges_run.add(e))
            for name, op in zip(net.primitives, edge.ops):
                op.register_forward_hook(lambda m, i, o, key=(e, name): ops_run.add(key))
    net.set_path(_path_genotype())
    net(_images()).pow(2).sum().backward()  # not .sum(): summed BN outputs (affine off) are constant
    # edges: 0 node0<-0 (conv), 1 node0<-1 (skip), 2 node1<-0 (unused), 3 node1<-1 (sep), 4 node1<-2 (dil)
    chosen = {(0, "conv_3x3"), (1, "skip_connect"), (3, "sep_conv_3x3"), (4, "dil_conv_3x3")}
    assert edges_run == {0, 1, 3, 4} and ops_run == chosen
    # (skip_connect has weights only on stride-2 edges: FactorizedReduce in the reduce cell)
    for cell in (m for m in net.modules() if isinstance(m, SearchCell)):
        for e, edge in enumerate(cell.edges):
            for name, op in zip(net.primitives, edge.ops):
                for p in op.parameters():
                    if (e, name) in chosen:
                        assert p.grad is not None and p.grad.abs().sum() > 0, (e, name)
                    else:
                        assert p.grad is None or not p.grad.any(), (e, name)
    assert all(p.grad is None for p in net.arch_parameters())  # path weights are constants


def test_set_path_none_restores_the_relaxation():
    torch.manual_seed(0)
    net = DartsCellsSpace(**TINY, partial_channels=2).supernet()
    x = _images()
    mixed = net(x)
    net.set_path(_path_genotype())
    path = net(x)
    net.set_path(None)
    assert not torch.allclose(path, mixed)
    assert torch.equal(net(x), mixed)


def test_set_path_validates_the_genotype():
    net = DartsCellsSpace(**TINY).supernet()
    bad = _path_genotype()
    bad.genotype["normal"][3] = ["conv_3x3", 3]  # node 1 has inputs 0..2
    with pytest.raises(GenotypeError, match="input 3"):
        net.set_path(bad)


# ---- arch_weights ----------------------------------------------------------------------------

def test_arch_weights_are_detached_normalised_cpu_tensors():
    net = DartsCellsSpace(**TINY, partial_channels=2).supernet()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    w = net.arch_weights()
    assert set(w) == {"normal", "reduce", "fusion", "beta_normal", "beta_reduce", "beta_fusion"}
    for key, value in w.items():
        assert value.device.type == "cpu" and not value.requires_grad
        if key.startswith("beta_"):
            assert value.shape == (5,)
            assert math.isclose(float(value[:2].sum()), 1, rel_tol=1e-6)   # node 0: edges 0-1
            assert math.isclose(float(value[2:].sum()), 1, rel_tol=1e-6)   # node 1: edges 2-4
        else:
            assert value.shape == (5, 9)
            assert torch.allclose(value.sum(dim=1), torch.ones(5))
    assert set(DartsCellsSpace(**TINY).supernet().arch_weights()) == {"normal", "reduce", "fusion"}


# ---- a real search through the CLI -----------------------------------------------------------

@pytest.mark.slow
def test_cli_search_with_partial_channels_writes_a_valid_genotype(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY_DATA, *TINY_SPACE, "batch_size=4", "strategy.warmup_epochs=0", f"run_dir={run_dir}",
            "search_space.partial_channels=2", "epochs=1", "max_steps_per_epoch=2"]
    proc = subprocess.run(module_cmd("nas.search", *args), capture_output=True, text=True, timeout=300,
                          env=run_env(tmp_path / "cache"), cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((run_dir / "genotype.json").read_text())
    assert "partial_channels" not in data["space_args"]  # the standalone network has none
    genotype = Genotype.from_dict(data)
    space = resolve(genotype)  # validates it against the space
    assert space.build(genotype)(torch.randn(1, 3, 64, 48)).shape == (1, 17, 16, 12)
    model = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    assert {"betas.normal", "betas.reduce", "betas.fusion"} <= set(model)
