"""The genotype file: envelope checks, space resolution, and the round trip in a new process."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nas.genotype import Genotype, GenotypeError, load, save
from nas.spaces import resolve, space_names
from search_spaces.darts_cells import DartsCellsSpace
from tests.helpers import REPO_ROOT


def _valid() -> dict:
    space = DartsCellsSpace(init_channels=4, layers=3, steps=2, reductions=1)
    import random
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


def test_every_shipped_space_resolves_by_name():
    assert "darts_cells" in space_names()


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
