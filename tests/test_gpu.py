"""The CUDA path: the same code on a GPU (skipped on machines without one)."""
from __future__ import annotations

import functools

import pytest
import torch

from nas.pose.loss import KeypointMSELoss
from search_spaces.darts_cells import DartsCellsSpace
from strategies.darts import Darts

pytestmark = pytest.mark.gpu


def test_darts_step_on_cuda_matches_cpu_shapes_and_moves_alphas():
    device = torch.device("cuda")
    space = DartsCellsSpace(init_channels=4, layers=3, steps=2, reductions=1)
    supernet = space.supernet().to(device)
    strategy = Darts(space, supernet, KeypointMSELoss(), functools.partial(torch.optim.SGD, lr=1.0),
                     functools.partial(torch.optim.Adam, lr=3e-3), epochs=1, steps_per_epoch=1)
    batch = {"image": torch.randn(2, 3, 64, 48, device=device),
             "target": torch.rand(2, 17, 16, 12, device=device),
             "target_weight": torch.ones(2, 17, 1, device=device)}
    before = [a.detach().clone() for a in supernet.arch_parameters()]
    out = strategy.step(batch, batch)
    assert torch.isfinite(torch.tensor(out["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, supernet.arch_parameters()))
    space.validate(strategy.result())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_half_precision_darts_and_retrain_steps_on_cuda(amp):
    """CUDA autocast (and the GradScaler for fp16): a DARTS step and a retrain step stay finite and move."""
    from nas.engine.train_loop import Trainer
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    device = torch.device("cuda")
    space = DartsCellsSpace(init_channels=4, layers=3, steps=2, reductions=1)
    supernet = space.supernet().to(device)
    strategy = Darts(space, supernet, KeypointMSELoss(), functools.partial(torch.optim.SGD, lr=0.05),
                     functools.partial(torch.optim.Adam, lr=3e-3), epochs=1, steps_per_epoch=1, amp=amp)
    batch = {"image": torch.randn(4, 3, 64, 48, device=device), "target": torch.rand(4, 17, 16, 12, device=device),
             "target_weight": torch.ones(4, 17, 1, device=device)}
    out = strategy.step(batch, batch)
    assert torch.isfinite(torch.tensor(out["loss"])) and torch.isfinite(torch.tensor(out["arch_loss"]))
    model = space.build(strategy.result()).to(device)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model, KeypointMSELoss(), torch.optim.Adam(model.parameters(), lr=1e-3), 1, 1, device, amp=amp)
    trainer._step(batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _nccl_worker(rank: int, port: int, out: str) -> None:
    import os
    from pathlib import Path
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from nas.engine import distributed
    world, device = distributed.setup("auto")
    grad = torch.full((3,), float(rank + 1), device=device)
    distributed.average_tensors([grad])
    torch.save({"grad": grad.cpu(), "device": str(device)}, Path(out) / f"rank{rank}.pt")
    distributed.shutdown(wait=True)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL between two GPUs needs two")
def test_nccl_averages_over_two_gpus(tmp_path):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_nccl_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["device"] for r in ranks] == ["cuda:0", "cuda:1"]
    for r in ranks:
        assert torch.equal(r["grad"], torch.full((3,), 1.5))  # (1 + 2) / 2
