"""`channels_last`: the NHWC network computes what the NCHW one does, and its checkpoints load anywhere."""
from __future__ import annotations

import copy
import io

import torch

from nas.engine.runtime import to_memory_format
from nas.genotype import Genotype
from nas.spaces import resolve

GENOTYPE = {
    "format": "posenas.genotype", "version": 1, "space": "darts_cells",
    "space_args": {"init_channels": 8, "layers": 2, "steps": 2, "reductions": 1, "num_keypoints": 3},
    "genotype": {"normal": [["sep_conv_3x3", 0], ["dil_conv_3x3", 1], ["sep_conv_5x5", 0], ["conv_3x3", 2]],
                 "reduce": [["sep_conv_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["avg_pool_3x3", 0]],
                 "fusion": [["conv_3x3", 0], ["sep_conv_3x3", 1], ["skip_connect", 0], ["dil_conv_3x3", 2]]},
    "input_size": [32, 24], "heatmap_size": [8, 6],
}


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    genotype = Genotype.from_dict(GENOTYPE)
    torch.manual_seed(0)
    nchw = resolve(genotype, genotype.space_args).build(genotype)
    nhwc = to_memory_format(copy.deepcopy(nchw), True)
    return nchw, nhwc


def test_channels_last_changes_the_layout_not_the_function():
    nchw, nhwc = _pair()
    convs = [m.weight for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs if w.shape[-1] > 1)  # NCHW strides are gone
    x = torch.randn(4, 3, 32, 24, generator=torch.Generator().manual_seed(1))
    out_ref, out = nchw(x), nhwc(x)
    assert out.is_contiguous(memory_format=torch.channels_last)  # the activations followed the weights
    assert torch.allclose(out, out_ref, atol=1e-5, rtol=1e-4)
    out_ref.square().mean().backward()
    out.square().mean().backward()
    for (name, p_ref), (_, p) in zip(nchw.named_parameters(), nhwc.named_parameters()):
        assert torch.allclose(p.grad, p_ref.grad, atol=1e-6, rtol=1e-3), name


def test_channels_last_is_off_when_asked():
    nchw, _ = _pair()
    same = to_memory_format(nchw, False)
    assert all(m.weight.is_contiguous() for m in same.modules() if isinstance(m, torch.nn.Conv2d))


def test_an_nhwc_checkpoint_loads_into_an_nchw_network():
    # nas.evaluate and nas.profile build the network in the default layout from best.pt.
    nchw, nhwc = _pair()
    with torch.no_grad():
        for p in nhwc.parameters():
            p.add_(0.01)  # weights that differ from the fresh network's
    buffer = io.BytesIO()
    torch.save(nhwc.state_dict(), buffer)
    buffer.seek(0)
    nchw.load_state_dict(torch.load(buffer))
    nchw.eval(), nhwc.eval()
    x = torch.randn(2, 3, 32, 24, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(nchw(x), nhwc(x), atol=1e-5, rtol=1e-4)


def test_random_search_reads_the_runs_layout_from_the_supernet():
    # strategy=random builds each candidate itself; it takes the layout nas.search gave the supernet.
    from strategies.random_search import _channels_last
    nchw, nhwc = _pair()
    assert _channels_last(nhwc) and not _channels_last(nchw)
    assert not _channels_last(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)))  # 1x1 kernels: layout unknown


def test_resuming_in_the_other_layout_gives_the_same_fused_adam_step():
    # channels_last may change on resume: the checkpoint's NCHW Adam moments then sit beside NHWC weights.
    # Fused Adam must still pair each weight with its own moments. Reference: element-wise Adam in NCHW
    # from the same state with the same gradient.
    gen = torch.Generator().manual_seed(4)
    start, grads = torch.randn(6, 5, 3, 3, generator=gen), [torch.randn(6, 5, 3, 3, generator=gen) for _ in range(3)]
    saved_run = torch.nn.Parameter(start.clone())
    saved_opt = torch.optim.Adam([saved_run], lr=1e-2)
    for g in grads[:2]:  # two steps so both moments are non-trivial
        saved_run.grad = g.clone()
        saved_opt.step()
    state = copy.deepcopy(saved_opt.state_dict())

    def resume(fused: bool, channels_last: bool) -> torch.Tensor:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.nn.Parameter(saved_run.detach().clone().contiguous(memory_format=layout))
        optimizer = torch.optim.Adam([weight], lr=1e-2, fused=fused)
        optimizer.load_state_dict(copy.deepcopy(state))
        assert optimizer.state[weight]["exp_avg"].stride() != weight.stride() or not channels_last
        weight.grad = grads[2].clone().contiguous(memory_format=layout)
        optimizer.step()
        return weight.detach()

    reference = resume(fused=False, channels_last=False)
    assert not torch.allclose(reference, saved_run.detach(), atol=1e-4)  # the step did move the weights
    assert torch.allclose(resume(fused=True, channels_last=True), reference, atol=1e-7)
