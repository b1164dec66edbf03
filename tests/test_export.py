"""python -m nas.export: every shipped space's network round-trips through ONNX and TorchScript, the numerical
check catches an export that computes something else, and the user's mistakes end in one `error:` line.

The round trips go through a retrain-style best.pt (genotype + weights) made here, with weights from
`nas.export.random_weights` so every branch (GC and SE blocks, grouped deconvs) carries signal, and are checked
twice: by the tool's own check (its JSON) and here, independently, by running the exported file. A genotype file
that is not in the repository yet is skipped with the reason; add new ones to CASES.
"""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from nas.export import (ExportCheckError, FinalHeatmaps, check, compare, export_onnx, export_torchscript,
                        load_exported, main, random_weights)
from nas.genotype import Genotype
from nas.spaces import resolve
from tests.helpers import REPO_ROOT

GENOTYPES = REPO_ROOT / "genotypes"
KEYPOINTS = 17
TOLERANCE = 1e-3  # of the heatmap range: the tool's default, restated so a changed default shows here
BOTH = ("onnx", "torchscript")


@dataclass(frozen=True)
class Case:
    """A genotype file, exported at `input_size` (small, and divisible by the network's output stride)."""
    name: str
    input_size: tuple[int, int]
    shrink: bool = False  # ViPNAS: one block per stage, keeping every kernel, group count and attention
    slow: tuple[str, ...] = ()  # the formats whose round trip takes over ~5 s here
    formats: tuple[str, ...] = BOTH  # the formats tested (TorchScript runs PyTorch's own kernels: one size is enough)
    id: str = ""  # the test id's stem, where the file name is not enough


def _vipnas_one_block_per_stage(data: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    stages = data["genotype"]["stages"]
    data["space_args"]["depth_choices"] = [[1]] * len(stages)
    for stage in stages:
        stage["depth"] = 1
    return data


CASES = [
    Case("weak_plain_conv", (64, 48)),
    Case("darts_cells_synthetic_seed0", (64, 48)),
    Case("s_vipnas_res50", (64, 64), shrink=True, id="s_vipnas_res50-1block"),
    Case("s_vipnas_mbv3", (64, 64), shrink=True, id="s_vipnas_mbv3-1block"),
    # written alongside the exporter: a test is skipped, with the reason, where its file is absent
    Case("hrnet_cpu", (96, 72), slow=("onnx",)),  # the CPU-sized members of the published families
    Case("simple_baseline_cpu", (96, 72)),
    Case("lpn_cpu", (96, 72), slow=("onnx",)),
    Case("mspn_cpu", (96, 72), slow=("onnx",)),
    # full size, where width changes a layer's kind (LPN's gcd-grouped deconvs; SimpleBaseline's 2048-channel
    # deconv input). The other files' layer kinds are all in the cases above (ViPNAS 1-block, the *_cpu
    # members); their full-size figures are in the README, measured with the same command.
    Case("simple_baseline_r50_coco_256x192", (64, 64), slow=BOTH, formats=("onnx",)),
    Case("lpn50_coco_256x192", (64, 64), slow=BOTH, formats=("onnx",)),
]


def _params(cases: list[Case]) -> list:
    params = []
    for case in cases:
        for fmt in case.formats:
            marks = [pytest.mark.slow] if fmt in case.slow else []
            params.append(pytest.param(case, fmt, marks=marks, id=f"{case.id or case.name}-{fmt}"))
    return params


def _genotype_data(case: Case) -> dict[str, Any]:
    path = GENOTYPES / f"{case.name}.json"
    if not path.is_file():
        pytest.skip(f"{path.relative_to(REPO_ROOT)} is not in the repository yet")
    data = json.loads(path.read_text())
    return _vipnas_one_block_per_stage(data) if case.shrink else data


def write_checkpoint(path: Path, data: dict[str, Any], input_size: tuple[int, int]) -> nn.Module:
    """A best.pt as nas.retrain writes it (the keys nas.export reads); returns the network it holds."""
    genotype = Genotype.from_dict(data)
    torch.manual_seed(0)
    net = random_weights(resolve(genotype).build(genotype), input_size, seed=1)
    heatmap_size = [input_size[0] // 4, input_size[1] // 4]
    torch.save({"model": net.state_dict(), "genotype": data, "input_size": list(input_size),
                "heatmap_size": heatmap_size, "epoch": 1}, path)
    return net


def _plain_checkpoint(tmp_path: Path) -> tuple[Path, nn.Module]:
    data = json.loads((GENOTYPES / "weak_plain_conv.json").read_text())
    path = tmp_path / "best.pt"
    return path, write_checkpoint(path, data, (64, 48))


def _run_file(fmt: str, path: Path, x: torch.Tensor) -> np.ndarray:
    """The exported file run as a user would: onnxruntime on a checked ONNX model, or torch.jit.load."""
    if fmt == "onnx":
        import onnx
        import onnxruntime
        onnx.checker.check_model(str(path))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["heatmaps"], {"image": x.numpy()})[0]
    with torch.no_grad():
        return torch.jit.load(str(path))(x).numpy()


def _run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- round trips ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case,fmt", _params(CASES))
@pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:FutureWarning")
def test_round_trip(case: Case, fmt: str, tmp_path, capsys):
    data = _genotype_data(case)
    checkpoint = tmp_path / "best.pt"
    net = write_checkpoint(checkpoint, data, case.input_size)
    code, out, err = _run_main([str(checkpoint), "--format", fmt, "--dynamic-batch"], capsys)
    assert code == 0, err
    export = tmp_path / ("best.onnx" if fmt == "onnx" else "best.ts.pt")
    info = json.loads((tmp_path / (export.name + ".json")).read_text())
    h, w = case.input_size
    fig = info["check"]
    assert info["weights"] == "checkpoint" and info["input_size"] == [h, w] and info["batch"] == "dynamic"
    assert fig["output_shape"] == [KEYPOINTS, h // 4, w // 4]
    assert [b["batch"] for b in fig["batches"]] == [2, 1, 3]
    assert fig["passed"] and fig["argmax_equal"] and fig["tolerance_rel"] == TOLERANCE
    assert fig["max_abs_diff"] <= max(TOLERANCE * fig["heatmap_range"], 4 * fig["float32_noise"])
    assert "check passed" in out
    # independently of the tool's check: the file on disk, at a batch size it was not traced or checked at
    x = torch.randn(4, 3, h, w, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = FinalHeatmaps(net).eval()(x).numpy()
    got = _run_file(fmt, export, x)
    assert got.shape == (4, KEYPOINTS, h // 4, w // 4)
    # with the tool's floor where the network amplifies float32 rounding (float32_noise: PyTorch vs float64)
    floor = 4 * fig["float32_noise"]
    assert np.abs(got - expected).max() <= max(TOLERANCE * (expected.max() - expected.min()), floor)
    assert expected.std() > 1e-3 * np.abs(expected).max()  # the heatmaps are not flat: the check compared signal


def test_fixed_batch_and_opset_17(tmp_path, capsys):
    checkpoint, _ = _plain_checkpoint(tmp_path)
    code, _, err = _run_main([str(checkpoint), "--batch", "3", "--opset", "17", "--out", str(tmp_path / "net.onnx")],
                             capsys)
    assert code == 0, err
    import onnx
    model = onnx.load(str(tmp_path / "net.onnx"))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [3, 3, 64, 48]
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    info = json.loads((tmp_path / "net.onnx.json").read_text())
    assert info["batch"] == 3 and [b["batch"] for b in info["check"]["batches"]] == [3]
    assert {"torch", "onnx", "onnxruntime", "onnxscript"} <= set(info["versions"]) and info["opset"] == 17


def test_list_output_exports_its_last_entry(tmp_path):
    """MSPN-style networks return one heatmap set per stage and unit; the prediction is the last one."""

    class TwoStages(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, KEYPOINTS, 3, 4, 1), nn.Conv2d(KEYPOINTS, KEYPOINTS, 3, 1, 1)

        def forward(self, x):
            first = self.a(x)
            return [first, first * 0.5, self.b(first)]

    torch.manual_seed(0)
    stages = TwoStages().eval()
    net = FinalHeatmaps(stages).eval()
    x = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        last = stages.b(stages.a(x)).numpy()
    export_torchscript(net, tmp_path / "m.ts.pt", x)
    export_onnx(net, tmp_path / "m.onnx", x, dynamic=False, opset=None)
    for fmt, path in (("torchscript", tmp_path / "m.ts.pt"), ("onnx", tmp_path / "m.onnx")):
        got = load_exported(fmt, path)(x)
        assert got.shape == (2, KEYPOINTS, 8, 6) and np.abs(got - last).max() < 1e-5


def test_genotype_without_checkpoint_says_its_weights_are_random(tmp_path, capsys):
    genotype = tmp_path / "plain.json"
    genotype.write_text((GENOTYPES / "weak_plain_conv.json").read_text())
    code, out, err = _run_main(["--genotype", str(genotype), "--format", "torchscript", "--input-size", "32", "24"],
                               capsys)
    assert code == 0, err
    assert out.startswith("note: random weights") and "weights random" in out
    info = json.loads((tmp_path / "plain.random.ts.pt.json").read_text())
    assert info["weights"] == "random" and info["input_size"] == [32, 24] and info["check"]["passed"]
    assert info["check"]["output_shape"] == [KEYPOINTS, 8, 6]


# ---- the check detects a wrong export ------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:FutureWarning")
def test_a_tampered_torchscript_file_fails_the_check(tmp_path):
    checkpoint, net = _plain_checkpoint(tmp_path)
    wrapped = FinalHeatmaps(net).eval()
    path = tmp_path / "m.ts.pt"
    export_torchscript(wrapped, path, torch.randn(2, 3, 64, 48))
    assert compare(wrapped, load_exported("torchscript", path), (64, 48), [2])["passed"]
    traced = torch.jit.load(str(path))
    with torch.no_grad():  # one 3x3 conv of the middle of the network, 1% bigger
        next(p for n, p in traced.named_parameters() if n == "net.6.weight").mul_(1.01)
    torch.jit.save(traced, str(path))
    figures = compare(wrapped, load_exported("torchscript", path), (64, 48), [2])
    assert not figures["passed"] and figures["max_abs_diff"] > figures["tolerance_abs"]
    with pytest.raises(ExportCheckError, match="above the tolerance"):
        check(figures)


def test_a_tampered_onnx_file_fails_the_check(tmp_path):
    import onnx
    from onnx import numpy_helper

    _, net = _plain_checkpoint(tmp_path)
    wrapped = FinalHeatmaps(net).eval()
    path = tmp_path / "m.onnx"
    export_onnx(wrapped, path, torch.randn(1, 3, 64, 48), dynamic=False, opset=None)
    assert compare(wrapped, load_exported("onnx", path), (64, 48), [1])["passed"]
    model = onnx.load(str(path))
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # a conv's weights
    values = numpy_helper.to_array(biggest).copy()
    values.flat[: values.size // 2] *= 1.01
    biggest.CopyFrom(numpy_helper.from_array(values, biggest.name))
    onnx.save(model, str(path))
    figures = compare(wrapped, load_exported("onnx", path), (64, 48), [1])
    assert not figures["passed"] and figures["max_abs_diff"] > figures["tolerance_abs"]


class Fixed(nn.Module):
    """A 'network' whose heatmaps are given (whatever the input): one sample, one joint."""

    def __init__(self, heatmap: np.ndarray):
        super().__init__()
        self.heatmap = torch.from_numpy(heatmap)[None, None]

    def forward(self, x):
        return self.heatmap.expand(x.shape[0], -1, -1, -1)


@pytest.mark.parametrize("gap,shift,passed", [(1.5, 1.0, False), (0.5, 0.4, True)],
                         ids=["argmax-moved-past-the-tolerance", "near-tie"])
def test_argmax_moves_fail_unless_near_ties(gap, shift, passed):
    """Heatmap range 1, tolerance 0.1 (absolute 0.1). The exported copy lowers the peak and raises a location
    `gap` tolerances below it, each by `shift` tolerances (within the tolerance): the argmax moves there. A
    location more than a tolerance below the peak was not a near-tie: the check fails on the argmax alone."""
    tol = 0.1
    ref = np.zeros((4, 4), np.float32)
    ref[0, 0], ref[2, 3] = 1.0, 1.0 - gap * tol
    out = ref.copy()
    out[0, 0] -= shift * tol
    out[2, 3] += shift * tol
    figures = compare(Fixed(ref), lambda x: np.broadcast_to(out, (x.shape[0], 1, 4, 4)), (8, 8), [2], tol)
    assert figures["argmax_differ"] == 2 and not figures["argmax_equal"]
    assert figures["max_abs_diff"] <= figures["tolerance_abs"] + 1e-6
    assert figures["passed"] is passed
    if not passed:
        with pytest.raises(ExportCheckError, match="argmax joint location differs for 2 of 2 joints"):
            check(figures)


class Rounding(nn.Module):
    """Loses float32 precision on purpose: x + 1e6 is rounded to a multiple of 1/16, so PyTorch's own float32
    heatmaps are off by up to 1/32 (float64 keeps x), about 4e-3 of their range of about 8."""

    def forward(self, x):
        return (x[:, :1, ::4, ::4] + 1e6) - 1e6


@pytest.mark.parametrize("offset,passed", [(0.06, True), (0.3, False)], ids=["within-float32-noise", "beyond"])
def test_the_tolerance_grows_to_pytorchs_own_float32_error(offset, passed):
    """An exported copy off by `offset` everywhere, against a tolerance of 4 x 1/32 = 0.125 (not 1e-3 x 8)."""
    net = Rounding()
    figures = compare(net, lambda x: net(x).numpy() + offset, (64, 64), [2])
    assert figures["float32_noise"] == pytest.approx(1 / 32, rel=0.1)
    assert figures["tolerance_from"] == "float32 noise"
    assert figures["tolerance_abs"] == pytest.approx(4 * figures["float32_noise"])
    assert figures["max_abs_diff"] == pytest.approx(offset, rel=1e-3) and figures["argmax_equal"]
    assert figures["passed"] is passed


def test_a_failed_check_exits_4_with_one_line_and_keeps_the_figures(tmp_path, capsys, monkeypatch):
    checkpoint, _ = _plain_checkpoint(tmp_path)
    real = load_exported

    def off_by_a_bit(fmt, path):
        run = real(fmt, path)
        return lambda x: run(x) * 1.05  # 5% too large: above 1e-3 of the range
    monkeypatch.setattr("nas.export.load_exported", off_by_a_bit)
    code, out, err = _run_main([str(checkpoint), "--format", "torchscript"], capsys)
    assert code == 4 and "check FAILED" in out
    assert err.count("\n") == 1 and err.startswith("error: the exported model does not match PyTorch")
    assert json.loads((tmp_path / "best.ts.pt.json").read_text())["check"]["passed"] is False


# ---- the user's mistakes ---------------------------------------------------------------------------------

def _one_error_line(code: int, err: str, *phrases: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for phrase in phrases:
        assert phrase in err, err


def test_missing_checkpoint(tmp_path, capsys):
    _one_error_line(*_run_main([str(tmp_path / "nope.pt")], capsys)[::2], "checkpoint not found", "--genotype")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 20, b"PK\x03\x04 truncated zip"],
                         ids=["empty", "garbage", "truncated"])
def test_corrupt_checkpoint(tmp_path, capsys, content):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    _one_error_line(*_run_main([str(path), "--format", "torchscript"], capsys)[::2],
                    "cannot be read as a PyTorch checkpoint", "nas.retrain")


def test_truncated_real_checkpoint(tmp_path, capsys):
    path, _ = _plain_checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _one_error_line(*_run_main([str(path)], capsys)[::2], "cannot be read as a PyTorch checkpoint")


def test_checkpoint_without_genotype(tmp_path, capsys):
    path = tmp_path / "best.pt"
    torch.save({"model": {}, "epoch": 3}, path)
    _one_error_line(*_run_main([str(path)], capsys)[::2], "holds no genotype")


def test_weights_of_another_network(tmp_path, capsys):
    path, _ = _plain_checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)
    state["genotype"]["genotype"]["widths"] = [16, 16, 16]
    torch.save(state, path)
    _one_error_line(*_run_main([str(path)], capsys)[::2], "weights do not fit the genotype's network")


def test_missing_onnxruntime(tmp_path, capsys, monkeypatch):
    path, _ = _plain_checkpoint(tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    _one_error_line(*_run_main([str(path), "--format", "onnx"], capsys)[::2],
                    "onnxruntime not installed", "pip install onnxruntime")
    assert not (tmp_path / "best.onnx").exists()


def test_existing_output_needs_force(tmp_path, capsys):
    path, _ = _plain_checkpoint(tmp_path)
    (tmp_path / "best.ts.pt").write_bytes(b"keep me")
    _one_error_line(*_run_main([str(path), "--format", "torchscript"], capsys)[::2], "--force")
    assert (tmp_path / "best.ts.pt").read_bytes() == b"keep me"
    code, _, err = _run_main([str(path), "--format", "torchscript", "--force"], capsys)
    assert code == 0, err
    assert (tmp_path / "best.ts.pt").read_bytes() != b"keep me"


@pytest.mark.parametrize("argv,phrase", [
    ([], "give a checkpoint"),
    (["best.pt", "--genotype", "g.json"], "not both"),
    (["best.pt", "--input-size", "0", "48"], "--input-size"),
    (["best.pt", "--batch", "0"], "--batch"),
    (["best.pt", "--format", "torchscript", "--opset", "18"], "--opset is for --format onnx"),
], ids=["neither", "both", "input-size", "batch", "opset-torchscript"])
def test_bad_arguments(tmp_path, capsys, monkeypatch, argv, phrase):
    monkeypatch.chdir(tmp_path)
    _plain_checkpoint(tmp_path)
    _one_error_line(*_run_main(argv, capsys)[::2], phrase)


def test_an_opset_the_exporter_cannot_reach_is_refused(tmp_path, capsys):
    path, _ = _plain_checkpoint(tmp_path)
    _one_error_line(*_run_main([str(path), "--opset", "9"], capsys)[::2], "cannot take the model to opset 9")
    assert not (tmp_path / "best.onnx").exists()
