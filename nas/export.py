"""python -m nas.export BEST.pt --format onnx|torchscript  ->  best.onnx or best.ts.pt, checked, + a JSON of the check

Exports the standalone network of a retrain run's best.pt (its genotype is rebuilt through its search space,
as nas.evaluate does, and its weights loaded), never a supernet, for serving outside posenas:

    python -m nas.export runs/.../best.pt --format onnx --dynamic-batch
    python -m nas.export runs/.../best.pt --format torchscript --input-size 256 192 --out /tmp/net.ts.pt
    python -m nas.export --genotype genotypes/s_vipnas_res50.json --format onnx   # random weights: a try-out

The exported model maps an image batch (B, 3, H, W) to heatmaps (B, K, H/4, W/4). A network that returns several
heatmap sets (MSPN: one per unit of every stage) is exported with the last only, the prediction. ONNX goes through
PyTorch's exporter (torch.onnx.export with dynamo=True, which needs onnx and onnxscript); TorchScript is a trace
(torch.jit.trace; PyTorch marks TorchScript deprecated, ONNX is the format to prefer).

Every export is checked before the command succeeds: PyTorch and the exported file (run by onnxruntime, or by
torch.jit.load) see the same random inputs, at the fixed batch, or at batches 2, 1 and 3 with --dynamic-batch.
The check fails (exit status 4, one line) when the largest heatmap difference is above the tolerance, or when an
argmax joint location differs where the PyTorch heatmap does not have a near-tie (two locations within the
tolerance of each other, which float noise may order either way). The tolerance is `--tolerance` (1e-3) times the
heatmap range, or 4 times PyTorch's own float32 error (against a float64 copy) where the network amplifies
rounding more than that. The figures go to <export>.json beside the export either way.

With --genotype and no checkpoint the weights are random: as built, then with zero-initialised layers (a GC
block's last conv) reset, norm layers' scales and shifts drawn at random and BatchNorm statistics measured on
random inputs, so every branch carries signal for the check. The output and the JSON say so.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import io
import json
import platform
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from nas.budget import check_budget
from nas.cli import ErrorExit, user_errors
from nas.engine.checkpoint import load_checkpoint
from nas.engine.runtime import configure_threads
from nas.errors import UserError
from nas.genotype import MAX_SIDE, Genotype, load, size_ok
from nas.pose.loss import final_heatmaps
from nas.spaces import resolve
from nas.utils.io import atomic_write_text, atomic_write_with

FORMATS = {"onnx": ".onnx", "torchscript": ".ts.pt"}  # format -> file suffix
DEFAULT_TOLERANCE = 1e-3  # of the heatmap range (max - min of PyTorch's heatmaps on the check inputs)
# x PyTorch's own float32 error, the tolerance's floor: the export and PyTorch each round about as much (their
# difference up to ~2x that error), and a runtime's kernels may round a little worse (onnxruntime 1.3x on MSPN)
NOISE_FACTOR = 4.0
DYNAMIC_EXAMPLE_BATCH = 2  # torch.export specialises a dimension whose example size is 1
DYNAMIC_CHECK_BATCHES = (2, 1, 3)
EXIT_CHECK_FAILED = 4  # nas.cli: 2 user error, 3 non-finite loss
NATIVE_OPSET = 18  # the lowest opset torch.onnx's dynamo exporter writes without a version converter
ONNX_NEEDS = ("onnx", "onnxscript", "onnxruntime")  # the exporter needs the first two, the check the third
INPUT_NAME, OUTPUT_NAME = "image", "heatmaps"
RANDOM_NOTE = "random weights (--genotype without a checkpoint): for trying an export only, its heatmaps mean nothing"


class ExportCheckError(Exception):
    """The exported model's heatmaps differ from PyTorch's beyond the tolerance."""


class FinalHeatmaps(nn.Module):
    """The network with one output: of several heatmap sets (MSPN: one per unit of every stage), the last,
    the prediction (`nas.pose.loss.final_heatmaps`, as evaluation decodes it)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return final_heatmaps(self.net(image))


@dataclass
class Source:
    """The network to export and where it came from."""
    model: nn.Module
    genotype: Genotype
    input_size: tuple[int, int]  # asked for, else the run's (a checkpoint's), else the genotype's
    path: Path  # the checkpoint, or the genotype file
    random: bool  # weights not trained: --genotype without a checkpoint


# ---- the network -------------------------------------------------------------------------------------

def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (pass a retrain run's best.pt, or --genotype G.json "
                        f"to try an export with random weights)")
    try:
        state = load_checkpoint(path)
    except Exception as err:  # torch.load fails in many ways on a foreign file: EOF, zip, pickle, key errors
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path} cannot be read as a PyTorch checkpoint ({type(err).__name__}: {detail}); "
                        f"pass the best.pt written by python -m nas.retrain") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} holds no model weights; pass the best.pt written by python -m nas.retrain")
    if "genotype" not in state:
        raise UserError(f"{path} holds no genotype; pass the best.pt written by python -m nas.retrain "
                        f"(or --genotype G.json with this file's weights' network)")
    return state


def load_source(checkpoint: str | Path | None, genotype_path: str | Path | None,
                input_size: Sequence[int] | None = None, seed: int = 0) -> Source:
    """The standalone network of a checkpoint (its weights), or of a genotype file (weights as built from
    `seed`; see `random_weights`), to run at `input_size` (default: the checkpoint's run's, else the genotype's)."""
    if (checkpoint is None) == (genotype_path is None):
        raise UserError("give a checkpoint (a retrain run's best.pt) or --genotype G.json, not both" if checkpoint
                        else "give a checkpoint (a retrain run's best.pt), or --genotype G.json for random weights")
    if checkpoint is not None:
        path = Path(checkpoint)
        state = _read_checkpoint(path)
        genotype = Genotype.from_dict(state["genotype"])
        size = input_size or state.get("input_size") or genotype.input_size
    else:
        path = Path(genotype_path)
        genotype = load(path)
        size = input_size or genotype.input_size
    space = resolve(genotype)
    check_budget(lambda: space.build(genotype), size)  # refuse a network too big before allocating it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random weights that --seed reproduces
        model = space.build(genotype)
    if checkpoint is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:  # PyTorch lists every missing and unexpected key over many lines
            raise UserError(f"{path}: the weights do not fit the genotype's network "
                            f"({' '.join(str(err).split())[:300]})") from None
    return Source(model.eval(), genotype, (int(size[0]), int(size[1])), path, random=checkpoint is None)


@torch.no_grad()
def random_weights(model: nn.Module, input_size: Sequence[int], seed: int = 0) -> nn.Module:
    """Give an untrained network weights under which every branch carries signal, for a meaningful check.

    As built, a GC block's last conv is zero (the block is the identity) and BatchNorm statistics are 0/1
    whatever the activations, so a branch an exporter got wrong could leave the heatmaps unchanged. Here
    zero-initialised conv and linear layers get PyTorch's default init, norm layers' scales and shifts are
    drawn around 1 and 0, and BatchNorm statistics are measured on random inputs (one pass in train mode)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        norms = []
        for module in model.modules():
            if isinstance(module, (_ConvNd, nn.Linear)) and not module.weight.any():
                module.reset_parameters()
            if isinstance(module, (_BatchNorm, nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            if isinstance(module, _BatchNorm) and module.track_running_stats:
                norms.append((module, module.momentum))
                module.reset_running_stats()
                module.momentum = None  # a cumulative average: the statistics of this pass alone
        model.train()
        model(torch.randn(2, 3, *input_size))  # batch 2: BatchNorm needs more than one value per channel
        for module, momentum in norms:
            module.momentum = momentum
    return model.eval()


# ---- exporters and runners -----------------------------------------------------------------------------

def missing_onnx_packages() -> list[str]:
    missing = []
    for name in ONNX_NEEDS:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def export_onnx(net: nn.Module, path: Path, example: torch.Tensor, dynamic: bool, opset: int | None) -> int:
    """Write `net` to `path` as one ONNX file (weights inside); returns the opset of the file.

    The exporter writes opset NATIVE_OPSET and above itself; a lower `opset` is reached with ONNX's version
    converter (as the exporter would), and refused in one line where the converter cannot get there."""
    import onnx.version_converter

    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines; failures raise
        program = torch.onnx.export(net, (example,), dynamo=True, dynamic_shapes=shapes,
                                    opset_version=None if opset is None else max(opset, NATIVE_OPSET),
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    proto = program.model_proto
    if opset is not None and opset < NATIVE_OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, opset)
        except Exception as err:  # the converter's C++ assertions arrive as RuntimeError, others as ValueError
            detail = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            raise UserError(f"ONNX's version converter cannot take the model to opset {opset} ({detail}); "
                            f"pass a higher --opset ({NATIVE_OPSET} and above need no conversion)") from None
    got = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    data = proto.SerializeToString()  # ValueError over protobuf's 2 GB: no network here comes near it
    atomic_write_with(path, lambda handle: handle.write(data))
    return got


def export_torchscript(net: nn.Module, path: Path, example: torch.Tensor) -> None:
    """Trace `net` on `example` and write it (torch.jit.load reads it back, without posenas)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        traced = torch.jit.trace(net, example, check_trace=False)  # the check below compares it, at every batch
        atomic_write_with(path, lambda handle: torch.jit.save(traced, handle))


def load_exported(fmt: str, path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    """A function running the exported file on a (B, 3, H, W) batch, outside the PyTorch module."""
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {INPUT_NAME: x.numpy()})[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).numpy()
    return run


# ---- the check ---------------------------------------------------------------------------------------

def compare(net: nn.Module, run: Callable[[torch.Tensor], np.ndarray], input_size: Sequence[int],
            batches: Sequence[int], tolerance: float = DEFAULT_TOLERANCE, seed: int = 0) -> dict[str, Any]:
    """PyTorch's heatmaps against the exported model's on the same random inputs, one batch size at a time.

    The absolute tolerance is `tolerance` x the heatmap range (max - min of PyTorch's heatmaps over all inputs),
    or NOISE_FACTOR x PyTorch's own float32 error (its heatmaps against a float64 copy of the network, on the
    first batch) where that is larger: a deep network can amplify rounding so that two correct float32
    implementations differ by more than 1e-3 of the range (2-stage MSPN with random weights: 4e-3 of it).
    For the argmax joint locations (per sample and joint): how many differ, and how many of those are not
    near-ties (PyTorch's values at the two locations more than the absolute tolerance apart). `passed` when
    the largest difference is within the tolerance and every differing argmax is a near-tie."""
    gen = torch.Generator().manual_seed(seed)
    exact = copy.deepcopy(net).double()
    pairs, noise = [], 0.0
    for b in batches:
        x = torch.randn(b, 3, *input_size, generator=gen)
        with torch.no_grad():
            ref = net(x).numpy()
            if not pairs:
                noise = float(np.abs(exact(x.double()).numpy() - ref).max())
        out = run(x)
        if out.shape != ref.shape:
            raise ExportCheckError(f"at batch {b} the exported model gives shape {list(out.shape)}, "
                                   f"PyTorch {list(ref.shape)}")
        pairs.append((b, ref.astype(np.float64), out.astype(np.float64)))
    lo, hi = min(r.min() for _, r, _ in pairs), max(r.max() for _, r, _ in pairs)
    scale = (hi - lo) or max(abs(lo), abs(hi)) or 1.0  # constant heatmaps: their magnitude; all zero: 1
    atol = max(tolerance * scale, NOISE_FACTOR * noise)
    per_batch, joints, differ, not_ties = [], 0, 0, 0
    for b, ref, out in pairs:
        flat_ref, flat_out = ref.reshape(*ref.shape[:2], -1), out.reshape(*out.shape[:2], -1)
        arg_ref, arg_out = flat_ref.argmax(-1), flat_out.argmax(-1)
        gap = (np.take_along_axis(flat_ref, arg_ref[..., None], -1)
               - np.take_along_axis(flat_ref, arg_out[..., None], -1))[..., 0]
        mismatch = arg_ref != arg_out
        per_batch.append({"batch": b, "max_abs_diff": float(np.abs(ref - out).max()),
                          "argmax_differ": int(mismatch.sum()), "joints": int(mismatch.size)})
        joints += mismatch.size
        differ += int(mismatch.sum())
        not_ties += int((mismatch & (gap > atol)).sum())
    max_diff = max(p["max_abs_diff"] for p in per_batch)
    return {"batches": per_batch, "output_shape": list(pairs[0][1].shape[1:]), "max_abs_diff": max_diff,
            "heatmap_range": float(hi - lo), "float32_noise": noise, "tolerance_rel": tolerance,
            "tolerance_abs": atol, "tolerance_from": "float32 noise" if atol > tolerance * scale else "heatmap range",
            "joints": joints, "argmax_equal": differ == 0, "argmax_differ": differ,
            "argmax_differ_not_ties": not_ties, "passed": bool(max_diff <= atol and not_ties == 0)}


def check(figures: dict[str, Any]) -> None:
    """Raise ExportCheckError with one line saying what differs, unless `figures` (from `compare`) passed."""
    if figures["passed"]:
        return
    problems = []
    if figures["max_abs_diff"] > figures["tolerance_abs"]:
        rule = (f"{NOISE_FACTOR:g} x PyTorch's float32 error {figures['float32_noise']:.3g}"
                if figures["tolerance_from"] == "float32 noise"
                else f"{figures['tolerance_rel']:g} of the heatmap range {figures['heatmap_range']:.3g}")
        problems.append(f"max abs heatmap difference {figures['max_abs_diff']:.3g} is above the tolerance "
                        f"{figures['tolerance_abs']:.3g} ({rule})")
    if figures["argmax_differ_not_ties"]:
        problems.append(f"the argmax joint location differs for {figures['argmax_differ_not_ties']} of "
                        f"{figures['joints']} joints")
    raise ExportCheckError("; ".join(problems))


# ---- the command -------------------------------------------------------------------------------------

def default_out(source: Source, fmt: str) -> Path:
    """Beside the input: best.pt -> best.onnx / best.ts.pt; G.json -> G.random.onnx (weights random)."""
    stem = source.path.name.removesuffix(source.path.suffix) + (".random" if source.random else "")
    return source.path.with_name(stem + FORMATS[fmt])


def versions(fmt: str) -> dict[str, str]:
    names = ("torch", "posenas") + (ONNX_NEEDS if fmt == "onnx" else ())
    found = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def _check_args(args: argparse.Namespace) -> None:
    if args.input_size is not None and not size_ok(args.input_size):
        raise UserError(f"--input-size must be H W in integers from 1 to {MAX_SIDE}, got {args.input_size}")
    if args.batch is not None and args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    if args.opset is not None and args.format != "onnx":
        raise UserError("--opset is for --format onnx")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if not args.tolerance > 0:
        raise UserError(f"--tolerance must be > 0, got {args.tolerance}")
    if args.format == "onnx" and (missing := missing_onnx_packages()):
        raise UserError(f"ONNX export needs {', '.join(ONNX_NEEDS)}; {', '.join(missing)} not installed: "
                        f"pip install {' '.join(missing)} (or pip install -e '.[export]' in a checkout)")


def export(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Export, check and describe; returns the export's path and the figures written beside it.
    The JSON is written before a failed check raises, so its figures stay for inspection."""
    _check_args(args)
    configure_threads(args.threads)
    source = load_source(args.checkpoint, args.genotype, args.input_size, args.seed)
    out = Path(args.out) if args.out else default_out(source, args.format)
    report = out.with_name(out.name + ".json")
    existing = [str(p) for p in (out, report) if p.exists()]
    if existing and not args.force:
        raise UserError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; pass --force "
                        f"to overwrite, or --out elsewhere")
    input_size = source.input_size
    if source.random:
        random_weights(source.model, input_size, args.seed)
        print(f"note: {RANDOM_NOTE}")
    net = FinalHeatmaps(source.model).eval()
    batch = DYNAMIC_EXAMPLE_BATCH if args.dynamic_batch else (args.batch or 1)
    example = torch.randn(batch, 3, *input_size, generator=torch.Generator().manual_seed(args.seed))
    opset = None
    if args.format == "onnx":
        opset = export_onnx(net, out, example, args.dynamic_batch, args.opset)
    else:
        export_torchscript(net, out, example)
    checked = DYNAMIC_CHECK_BATCHES if args.dynamic_batch else (batch,)
    figures = compare(net, load_exported(args.format, out), input_size, checked, args.tolerance, args.seed)
    info = {"format": args.format, "export": str(out), "source": str(source.path), "space": source.genotype.space,
            "weights": "random" if source.random else "checkpoint", "input_size": list(input_size),
            "batch": "dynamic" if args.dynamic_batch else batch, "opset": opset,
            "check": figures, "versions": versions(args.format)}
    atomic_write_text(report, json.dumps(info, indent=2) + "\n")
    return out, info


def summary(out: Path, info: dict[str, Any]) -> str:
    """The lines printed after an export: what was written, and the check's figures."""
    fig = info["check"]
    h, w = info["input_size"]
    what = f"opset {info['opset']}" if info["opset"] else "traced"
    runner = "onnxruntime" if info["format"] == "onnx" else "torch.jit.load"
    shape = ", ".join(map(str, fig["output_shape"]))
    lines = [f"exported {info['source']} -> {out} ({info['format']}, {what}; {INPUT_NAME} (B, 3, {h}, {w}) -> "
             f"{OUTPUT_NAME} (B, {shape}), batch {info['batch']}; weights {info['weights']})"]
    for b in fig["batches"]:
        argmax = ("argmax joints identical" if not b["argmax_differ"]
                  else f"argmax joints differ at {b['argmax_differ']} of {b['joints']}")
        lines.append(f"check {runner} vs PyTorch, batch {b['batch']}: max abs diff {b['max_abs_diff']:.3g}, "
                     f"{argmax}")
    verdict = "passed" if fig["passed"] else "FAILED"
    rule = (f"{NOISE_FACTOR:g} x PyTorch's float32 error" if fig["tolerance_from"] == "float32 noise"
            else f"{fig['tolerance_rel']:g} x heatmap range")
    lines.append(f"check {verdict}: max abs diff {fig['max_abs_diff']:.3g} (tolerance {fig['tolerance_abs']:.3g} = "
                 f"{rule}; heatmap range {fig['heatmap_range']:.3g}, PyTorch's float32 error "
                 f"{fig['float32_noise']:.3g}); argmax joints {'identical' if fig['argmax_equal'] else 'differ'}; "
                 f"figures in {out}.json")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nas.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="a retrain run's best.pt (it carries the genotype)")
    parser.add_argument("--genotype", help="a genotype JSON to export with random weights instead (a try-out)")
    parser.add_argument("--format", choices=list(FORMATS), default="onnx", help="default: onnx")
    parser.add_argument("--out", help="the file to write (default beside the input: best.onnx / best.ts.pt)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing export and its JSON")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                        help="default: the run's input size (the genotype's without a checkpoint)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--dynamic-batch", action="store_true", help="any batch size (checked at 2, 1 and 3)")
    batch.add_argument("--batch", type=int, help="the fixed batch size (default 1); a TorchScript trace made at it "
                       "may run at others, but is checked at this one only")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, 20 in PyTorch 2.14)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest heatmap difference allowed, relative to the heatmap range (default 1e-3; "
                        "4x PyTorch's own float32 error where that is larger)")
    parser.add_argument("--seed", type=int, default=0, help="of the check's random inputs (and random weights)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: nas.engine.runtime's rule)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with user_errors():
        try:
            out, info = export(args)
            print(summary(out, info))
            check(info["check"])
        except ExportCheckError as err:
            message = f"error: the exported model does not match PyTorch: {err}; do not use it (kept for inspection)"
            print(message, file=sys.stderr)
            raise ErrorExit(EXIT_CHECK_FAILED, message) from None


if __name__ == "__main__":
    main()
