"""The genotype file: envelope checks, space resolution, and the round trip in a new process."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch

from nas.budget import build_on_meta
from nas.genotype import Genotype, GenotypeError, load, save
from nas.pose.loss import final_heatmaps
from nas.spaces import build_space, resolve, space_names
from search_spaces.darts_cells import DartsCellsSpace
from tests.helpers import REPO_ROOT


def _valid() -> dict:
    space = DartsCellsSpace(init_channels=4, layers=3, steps=2, reductions=1)
    return space.sample(random.Random(1)).to_dict()


def _write(tmp_path, data) -> str:
    path = tmp_path / "g.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.pop("genotype"), "missing field(s): genotype"),
    (lambda d: d.update(version=99), "'version'"),
    (lambda d: d.update(extra=1), "unknown field(s): extra"),
    (lambda d: d.update(format="other"), "'format'"),
    (lambda d: d.update(input_size=[256]), "'input_size'"),
    (lambda d: d.update(space="../../etc/passwd"), "'space'"),
])
def test_envelope_errors_name_the_field(tmp_path, mutate, expected):
    data = _valid()
    mutate(data)
    with pytest.raises(GenotypeError, match=None) as err:
        load(_write(tmp_path, data))
    assert expected in str(err.value)


def test_not_json_and_missing_file(tmp_path):
    with pytest.raises(GenotypeError, match="not valid JSON"):
        load(_write(tmp_path, "{not json"))
    with pytest.raises(GenotypeError, match="not found"):
        load(tmp_path / "nope.json")


def test_unknown_space_and_op_are_rejected(tmp_path):
    data = _valid()
    data["space"] = "no_such_space"
    with pytest.raises(GenotypeError, match="unknown search space 'no_such_space'"):
        resolve(Genotype.from_dict(data))
    data = _valid()
    data["genotype"]["normal"][0][0] = "os.system"
    with pytest.raises(GenotypeError, match="unknown op 'os.system'"):
        resolve(Genotype.from_dict(data))


def test_space_args_cannot_smuggle_a_target(tmp_path):
    data = _valid()
    data["space_args"]["primitives"] = {"_target_": "os.system", "command": "echo pwned"}
    with pytest.raises(GenotypeError, match="forbidden key '_target_'"):
        resolve(Genotype.from_dict(data))
    data = _valid()
    data["space_args"]["evil"] = 1
    with pytest.raises(GenotypeError, match="does not take evil"):
        resolve(Genotype.from_dict(data))


def test_the_shipped_spaces_are_the_config_files():
    shipped = sorted(p.stem for p in (REPO_ROOT / "conf" / "search_space").glob("*.yaml"))
    assert space_names() == shipped and {"darts_cells", "vipnas_resnet", "vipnas_mbv3"} <= set(shipped)


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO_ROOT / "conf" / "search_space").glob("*.yaml")))
def test_every_shipped_space_resolves_by_name(name):
    """Each conf/search_space/ file builds its space with its own defaults, and the space's supernet
    and a sampled member run (on the meta device: shapes only) to (1, K, H/4, W/4) heatmaps."""
    space = build_space(name, {})
    assert space.name == name  # the name its genotypes will carry
    member = space.sample(random.Random(0))
    space.validate(member)
    clips = getattr(space, "takes_clips", False)  # video networks: (1, L, 3, H, W) -> (1, L, K, h, w)
    for make in (space.supernet, lambda: space.build(member)):
        net = build_on_meta(make)
        x = torch.empty(1, 2, 3, 64, 48, device="meta") if clips else torch.empty(1, 3, 64, 48, device="meta")
        out = final_heatmaps(net.eval()(x))
        assert out.shape == ((1, 2) if clips else (1,)) + (space.args["num_keypoints"], 16, 12)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "genotypes").glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_genotype_resolves_and_builds(path):
    """Every genotype file in genotypes/ loads, resolves to its space, and builds a network whose
    heatmaps at the file's input_size have the file's heatmap_size (on the meta device)."""
    genotype = load(path)
    net = build_on_meta(lambda: resolve(genotype).build(genotype))
    out = final_heatmaps(net.eval()(torch.empty(1, 3, *genotype.input_size, device="meta")))
    assert out.shape == (1, genotype.space_args.get("num_keypoints", 17), *genotype.heatmap_size)


def test_round_trip_in_a_new_process(tmp_path):
    """build(load(save(g))) in another interpreter gives the same parameter shapes."""
    genotype = Genotype.from_dict(_valid())
    path = save(genotype, tmp_path / "g.json")
    here = {k: list(v.shape) for k, v in resolve(genotype).build(genotype).state_dict().items()}
    code = ("import json,sys; from nas.genotype import load; from nas.spaces import resolve;"
            "g=load(sys.argv[1]); n=resolve(g).build(g);"
            "print(json.dumps({k: list(v.shape) for k, v in n.state_dict().items()}))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         cwd=REPO_ROOT, check=True).stdout
    assert json.loads(out) == here
