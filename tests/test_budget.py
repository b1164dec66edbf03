"""Genotype files are bounded: each space's BOUNDS table refuses absurd or mistyped size arguments,
and the entry points refuse a network above the parameter / activation budget before allocating it.

Every refusal here must come without building the network for real: a network of 1e6 channels or
1e5 layers would need terabytes, so a run that allocated it would be killed or raise a MemoryError,
not exit with status 2 and a one-line message naming the field.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from nas.budget import activation_bytes, build_on_meta, check_budget, count_params
from nas.errors import UserError
from nas.genotype import GenotypeError, load
from nas.spaces import build_space, resolve
from tests.helpers import REPO_ROOT, TINY_DATA, module_cmd, run_env

DARTS = REPO_ROOT / "genotypes" / "darts_cells_synthetic_seed0.json"
RES50 = REPO_ROOT / "genotypes" / "s_vipnas_res50.json"
PLAIN = REPO_ROOT / "genotypes" / "weak_plain_conv.json"


def _wide_stage(d: dict) -> None:
    """A ViPNAS stage of width 1e7: in the space's choices and in the genotype."""
    d["space_args"]["width_choices"][3].append(10_000_000)
    d["genotype"]["stages"][3]["width"] = 10_000_000


# The review's examples: (name, source file, edit, text the one-line error must contain)
EXAMPLES: list[tuple[str, Path, Callable[[dict], None], str]] = [
    ("init_channels_1e6", DARTS, lambda d: d["space_args"].update(init_channels=1_000_000),
     "field 'space_args.init_channels': 1000000 is outside [1, 256]"),
    ("layers_1e5", DARTS, lambda d: d["space_args"].update(layers=100_000),
     "field 'space_args.layers': 100000 is outside [1, 64]"),
    ("vipnas_width_1e7", RES50, _wide_stage, "field 'space_args.width_choices[3][3]': 10000000 is outside"),
    ("input_size_1e6", DARTS, lambda d: d.update(input_size=[1_000_000, 1_000_000]), "field 'input_size'"),
    ("init_channels_negative", DARTS, lambda d: d["space_args"].update(init_channels=-4),
     "field 'space_args.init_channels': -4 is outside"),
    ("float_for_int", DARTS, lambda d: d["space_args"].update(init_channels=16.0),
     "field 'space_args.init_channels': must be an integer, got 16.0"),
    ("bool_for_int", DARTS, lambda d: d["space_args"].update(layers=True),
     "field 'space_args.layers': must be an integer, got True"),
]
IDS = [e[0] for e in EXAMPLES]


def _write(tmp_path: Path, source: Path, edit: Callable[[dict], None]) -> Path:
    data = json.loads(source.read_text())
    edit(data)
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("name, source, edit, message", EXAMPLES, ids=IDS)
def test_review_examples_are_refused_naming_the_field(tmp_path, name, source, edit, message):
    path = _write(tmp_path, source, edit)
    with pytest.raises(GenotypeError) as err:
        resolve(load(path))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("stage, key, value, message", [
    (3, "width", 10_000_000, "field 'genotype.stages[3].width': 10000000 is not one of"),
    (0, "depth", 3.0, "field 'genotype.stages[0].depth': 3.0 is not one of"),
])
def test_vipnas_genotype_values_outside_the_space_are_refused(stage, key, value, message):
    genotype = load(RES50)
    genotype.genotype["stages"][stage][key] = value
    with pytest.raises(GenotypeError, match=None) as err:
        resolve(genotype)
    assert message in str(err.value)


@pytest.mark.parametrize("name, args, field", [
    ("plain_conv", {"widths": [32] * 65}, "widths"),
    ("plain_conv", {"stem_channels": 0}, "stem_channels"),
    ("vipnas_mbv3", {"expansion_choices": [1, 2, 100]}, "expansion_choices[2]"),
    ("vipnas_mbv3", {"kernel_choices": [3, 31]}, "kernel_choices[1]"),
    ("vipnas_resnet", {"depth_choices": [[1], [1], [1000]]}, "depth_choices[2][0]"),
    ("vipnas_resnet", {"strides": [1, 2, 3]}, "strides[2]"),
    ("darts_cells", {"steps": 100}, "steps"),
    ("darts_cells", {"num_keypoints": 0}, "num_keypoints"),
])
def test_every_space_bounds_its_size_arguments(name, args, field):
    with pytest.raises(GenotypeError, match=None) as err:
        build_space(name, args)
    assert f"field 'space_args.{field}'" in str(err.value)


def test_plain_conv_genotype_widths_are_bounded():
    genotype = load(PLAIN)
    genotype.genotype["widths"] = [32, 10_000_000]
    with pytest.raises(GenotypeError, match=r"field 'genotype.widths\[1\]': 10000000 is outside"):
        resolve(genotype)


# ---- the budget: counted on the meta device --------------------------------------------------------

def test_meta_counts_match_a_hand_count():
    """plain_conv (stem 16, widths [32, 32, 32], 17 keypoints) at 96x72, batch 1, float32. Leaf outputs:
    stem conv + BN at 48x36 (16 ch) and at 24x18 (16 ch), three conv + BN at 24x18 (32 ch), the 1x1
    head conv (17 ch); the in-place ReLUs and the empty deconv stage return their input (not counted)."""
    net = build_on_meta(resolve(load(PLAIN)).supernet)
    elements = 2 * 16 * 48 * 36 + 2 * 16 * 24 * 18 + 6 * 32 * 24 * 18 + 17 * 24 * 18
    assert activation_bytes(net, (96, 72)) == 4 * elements
    convs = [(3, 16), (16, 16), (16, 32), (32, 32), (32, 32)]
    params = sum(9 * a * b + 2 * b for a, b in convs) + 32 * 17 + 17  # 3x3 convs + BN, 1x1 head with bias
    assert count_params(net) == params
    assert all(p.is_meta for p in net.parameters())


def test_a_network_within_the_bounds_can_still_be_over_the_default_budget():
    # 64 layers of 4096 channels: every field in range, 64 x 9 x 4096^2 ~ 9.7e9 parameters
    space = build_space("plain_conv", {"widths": [4096] * 64})
    with pytest.raises(UserError, match=r"M parameters, above max_params_m=500"):
        check_budget(space.supernet, (96, 72))
    # 3 layers of 4096 channels (0.3e9 parameters) at 4096x4096: ~100 GB of activations
    space = build_space("plain_conv", {"widths": [4096] * 3})
    with pytest.raises(UserError, match=r"GB of activations at batch 1 on a 4096x4096 input, above max_activation_gb=32"):
        check_budget(space.supernet, (4096, 4096))


def test_budget_limits_are_configurable_and_checked():
    space = resolve(load(PLAIN))
    size = check_budget(space.supernet, (96, 72), max_params_m=0.03, max_activation_gb=0.001)
    assert size.params < 0.03e6 and size.activation_bytes < 0.001e9
    with pytest.raises(UserError, match="max_params_m=0.02"):
        check_budget(space.supernet, (96, 72), max_params_m=0.02)
    with pytest.raises(UserError, match="max_activation_gb=0.0005"):
        check_budget(space.supernet, (96, 72), max_activation_gb=0.0005)
    with pytest.raises(UserError, match="max_params_m must be a positive number"):
        check_budget(space.supernet, (96, 72), max_params_m=0)
    with pytest.raises(UserError, match="input_size must be"):
        check_budget(space.supernet, (0, 72))


@pytest.mark.slow
def test_published_networks_and_full_size_supernets_fit_the_default_budget():
    for path, size in ((RES50, (256, 192)), (REPO_ROOT / "genotypes" / "s_vipnas_mbv3.json", (256, 192))):
        genotype = load(path)
        space = resolve(genotype)
        check_budget(lambda: space.build(genotype), size)
        check_budget(space.supernet, size)  # the full-size space's supernet (dense shared weights)
    genotype = load(DARTS)
    l18_c64 = resolve(genotype, {**genotype.space_args, "layers": 18, "init_channels": 64})
    check_budget(lambda: l18_c64.build(genotype), (384, 288))  # PoseNAS L18-C64 at its COCO input


# ---- through the command line: exit status 2, one line naming the field -----------------------------

def _run(tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(module_cmd(module, *args), capture_output=True, text=True, timeout=300,
                          env=run_env(tmp_path / ".cache"), cwd=tmp_path)


def _assert_refused(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


# Each example goes through one entry point's command line (alternating, so both are covered; the
# validation itself is shared and checked for every example in-process above): a process costs ~7 s.
CLI_EXAMPLES = [(("nas.profile", "nas.retrain")[i % 2], *e) for i, e in enumerate(EXAMPLES)]


@pytest.mark.slow
@pytest.mark.parametrize("module, name, source, edit, message", CLI_EXAMPLES,
                         ids=[f"{e[1]}-{e[0]}" for e in CLI_EXAMPLES])
def test_cli_refuses_the_review_examples(tmp_path, module, name, source, edit, message):
    path = _write(tmp_path, source, edit)
    _assert_refused(_run(tmp_path, module, str(path), f"run_dir={tmp_path / 'run'}" if module == "nas.retrain"
                         else "latency=false"), message)


@pytest.mark.slow
@pytest.mark.parametrize("module, args, message", [
    ("nas.profile", [str(PLAIN), "latency=false", "input_size=[4096,4096]", "max_activation_gb=1"],
     "above max_activation_gb=1"),
    ("nas.retrain", [str(PLAIN), "max_params_m=0.02"], "above max_params_m=0.02"),
    ("nas.search", [*TINY_DATA, "search_space=plain_conv", "strategy=random", "max_params_m=0.02"],
     "above max_params_m=0.02"),
])
def test_cli_budget_is_a_config_key(tmp_path, module, args, message):
    if module != "nas.profile":
        args = [*args, f"run_dir={tmp_path / 'run'}"]
    _assert_refused(_run(tmp_path, module, *args), message)
