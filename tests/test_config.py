"""Config options checked before any work, resume against a changed config, and the search's early stop."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from nas.config import check_config, register
from nas.engine.runtime import check_resume
from nas.engine.search_loop import EarlyStop, run_search
from nas.errors import UserError
from nas.genotype import Genotype
from nas.inspect_config import register as register_inspect

REPO_ROOT = Path(__file__).resolve().parents[1]

# ---- every group option is type-checked before any work (issue 9 item 8) --------------------------
CONF = REPO_ROOT / "conf"
ENTRY_CONFIGS = ("search", "retrain", "evaluate", "inspect", "profile", "study")


def _compose(config: str, overrides: list[str]) -> DictConfig:
    register()
    register_inspect()
    with initialize_config_module("conf", version_base="1.3"):
        return compose(config, overrides=overrides)


def _groups() -> list[tuple[str, str]]:
    """(group, option) for every YAML file in conf/<group>/ that builds something (has a _target_)."""
    return [(p.parent.name, p.stem) for p in sorted(CONF.glob("*/*.yaml"))
            if "_target_" in OmegaConf.to_container(OmegaConf.load(p))]


def _config_with(group: str) -> str:
    """The first top-level config whose defaults list `group`."""
    return next(name for name in ENTRY_CONFIGS
                if any(group in str(d) for d in OmegaConf.load(CONF / f"{name}.yaml").get("defaults", [])))


def _typed_leaves(node: DictConfig, path: str) -> list[tuple[str, Any]]:
    """(key, value) for each scalar or list value of a _target_ node and of the _target_ nodes below it;
    plain nested dicts (e.g. data.augment) are passed through as a whole and not walked."""
    out = []
    for key in node:
        if str(key).startswith("_") or OmegaConf.is_missing(node, key) or node[key] is None:
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            if "_target_" in value:
                out += _typed_leaves(value, f"{path}.{key}")
            continue
        out.append((f"{path}.{key}", OmegaConf.to_container(value) if isinstance(value, ListConfig) else value))
    return out


def _bad_value(value: Any) -> Any:
    """A value of another type than the shipped default's: a word for numbers, flags and lists,
    a list for words."""
    return [1, 2] if isinstance(value, str) else "maybe"


CASES = [pytest.param(_config_with(g), [f"{g}={o}"], g, id=f"{g}={o}") for g, o in _groups()] + [
    pytest.param("retrain", [], "optimizer", id="retrain.optimizer"),
    pytest.param("retrain", [], "criterion", id="retrain.criterion"),
    pytest.param("search", [], "criterion", id="search.criterion")]


def test_every_group_option_is_found():
    found = {g for g, _ in _groups()}
    assert {"data", "search_space", "strategy"} <= found and "preset" not in found


@pytest.mark.parametrize("config, overrides, node", CASES)
def test_a_shipped_option_passes_and_every_wrong_type_or_unknown_key_is_named(config, overrides, node):
    cfg = _compose(config, overrides)
    check_config(cfg)  # as shipped: nothing to refuse
    leaves = _typed_leaves(OmegaConf.select(cfg, node), node)
    assert leaves, f"{node} has no typed key to test"
    cfg = OmegaConf.create({node: OmegaConf.to_container(cfg[node])})  # the node alone: a faster check
    for key, value in leaves:
        bad = cfg.copy()
        OmegaConf.update(bad, key, _bad_value(value), merge=False)
        with pytest.raises(UserError) as err:
            check_config(bad)
        message = str(err.value)
        assert f"{key}=" in message and "wrong type" in message and "\n" not in message, message
    bad = cfg.copy()
    with open_dict(bad):
        OmegaConf.update(bad, f"{node}.no_such_option", 1, force_add=True)
    with pytest.raises(UserError, match=rf"^{node}\.no_such_option is not an option of .*; its options are "):
        check_config(bad)


def test_an_override_string_is_checked_like_a_yaml_value():
    cfg = _compose("search", ["strategy=darts_second_order", "strategy.unrolled=maybe"])
    with pytest.raises(UserError, match=r"strategy.unrolled='maybe' has the wrong type: .* unrolled: bool"):
        check_config(cfg)
    check_config(_compose("search", ["strategy.unrolled=false", "strategy.weight_optimizer.lr=1"]))  # int ok as float


@pytest.mark.parametrize("config, override, key", [
    ("search", "epochs=0", "epochs"), ("search", "batch_size=-2", "batch_size"),
    ("search", "arch_fraction=1.0", "arch_fraction"), ("retrain", "optimizer.lr=-0.1", "optimizer"),
    ("search", "strategy.arch_optimizer.betas=[0.5,1.5]", "strategy.arch_optimizer"),
    ("evaluate", "eval_batch_size=0", "eval_batch_size")])
def test_impossible_values_are_refused_naming_the_key(config, override, key):
    with pytest.raises(UserError, match=rf"^{key}[:=]"):
        check_config(_compose(config, [override]))


# ---- resume against a changed config (issue 9 item 7) -------------------------------------------------
RUN = {"seed": 0, "epochs": 4, "device": "cpu", "threads": None, "num_workers": 1, "resume": False,
       "resume_allow_changes": [], "run_dir": "runs/a", "data": {"_target_": "d", "sigma": 2.0},
       "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.002, "betas": [0.9, 0.999]}}


def _saved_run(tmp_path: Path) -> Path:
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(RUN)))
    return tmp_path


def _resume_with(**changes: Any) -> DictConfig:
    cfg = OmegaConf.create(json.loads(json.dumps(RUN)))
    for key, value in changes.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, merge=False)
    return cfg


def test_resume_with_the_same_config_or_only_free_keys_changed_passes(tmp_path):
    run = _saved_run(tmp_path)
    before = (run / "config.yaml").read_text()
    cfg = _resume_with(resume=True, device="cuda", threads=8, num_workers=0, run_dir="/abs/runs/a")
    assert check_resume(cfg, run) == {}
    assert (run / "config.yaml").read_text() == before and not (run / "resume_changes.jsonl").exists()


def test_resume_with_changed_keys_is_refused_naming_them_and_touches_nothing(tmp_path):
    run = _saved_run(tmp_path)
    before = sorted((p.name, p.read_bytes()) for p in run.iterdir())
    cfg = _resume_with(resume=True, epochs=6, optimizer__lr=0.001, optimizer__betas=[0.5, 0.999])
    with pytest.raises(UserError) as err:
        check_resume(cfg, run)
    message = str(err.value)
    assert "\n" not in message
    for key in ("epochs (4 -> 6)", "optimizer.lr (0.002 -> 0.001)", "optimizer.betas ([0.9, 0.999] -> [0.5, 0.999])"):
        assert key in message, message
    assert "resume_allow_changes=[epochs,optimizer.betas,optimizer.lr]" in message
    assert sorted((p.name, p.read_bytes()) for p in run.iterdir()) == before


def test_a_key_absent_from_the_saved_run_counts_as_a_change(tmp_path):
    with pytest.raises(UserError, match=r"data.max_val \(\"<absent>\" -> 5\)"):
        check_resume(_resume_with(resume=True, data__max_val=5), _saved_run(tmp_path))


def test_allowed_changes_are_recorded_and_the_new_config_kept(tmp_path):
    run = _saved_run(tmp_path)
    cfg = _resume_with(resume=True, epochs=6, optimizer__lr=0.001, device="cuda",
                       resume_allow_changes=["epochs", "optimizer"])  # a prefix covers the group
    check_resume(cfg, run)
    records = [json.loads(line) for line in (run / "resume_changes.jsonl").read_text().splitlines()]
    assert [r["changes"] for r in records] == [{"epochs": {"old": 4, "new": 6},
                                                "optimizer.lr": {"old": 0.002, "new": 0.001}}]
    assert OmegaConf.load(run / "config.yaml").epochs == 6
    with pytest.raises(UserError, match=r"seed \(0 -> 1\).*resume_allow_changes=\[seed\]"):
        check_resume(_resume_with(resume=True, epochs=6, optimizer__lr=0.001, seed=1,
                                  resume_allow_changes=["epochs", "optim"]), run)  # not a key prefix


def test_another_group_option_asks_to_allow_the_group(tmp_path):
    run = _saved_run(tmp_path)
    cfg = _resume_with(resume=True, optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1.0,
                                               "momentum": 0.9, "nesterov": True, "dampening": 0.0,
                                               "weight_decay": 1e-4})
    with pytest.raises(UserError, match=r"and \d+ more; .*resume_allow_changes=\[optimizer\] "):
        check_resume(cfg, run)


# ---- early_stop (issue 9 item 14) ------------------------------------------------------------------


def _cells(normal_skips: int, reduce_skips: int = 0, tag: int = 0) -> dict:
    """A DARTS-cell genotype with 4 normal and 4 reduce edges, `*_skips` of them skip_connect."""
    def cell(skips: int) -> list:
        return [["skip_connect" if i < skips else "sep_conv_3x3", i % 2] for i in range(4)]
    return {"normal": cell(normal_skips), "reduce": cell(reduce_skips), "fusion": [["conv_3x3", 0]], "tag": tag}


class Scripted:
    """A strategy whose decoded genotype after epoch e is `genotypes[e]`; `warmup` epochs move nothing."""

    def __init__(self, genotypes: list[dict], warmup_epochs: int | None = None):
        self.genotypes, self.epoch, self.steps = genotypes, 0, 0
        if warmup_epochs is not None:
            self.warmup_steps = warmup_epochs  # one step per epoch below

    def step(self, train_batch, val_batch):
        self.steps += 1
        return {"loss": 0.0}

    def end_epoch(self):
        self.epoch += 1
        return {}

    def result(self):
        return Genotype("darts_cells", self.genotypes[min(self.epoch, len(self.genotypes)) - 1])

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _search(tmp_path: Path, genotypes: list[dict], rule: str | None, **kwargs) -> tuple[dict, list[int]]:
    """Run the real search loop over the scripted genotypes: (returned genotype, epochs logged)."""
    batch = {"image": torch.zeros(1)}
    out = run_search(Scripted(genotypes, **kwargs), torch.nn.Linear(1, 1), [batch], [batch], len(genotypes),
                     torch.device("cpu"), tmp_path, None, early_stop=rule)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return out.genotype, epochs


def test_darts_plus_stops_at_two_normal_skips_and_returns_that_epoch(tmp_path):
    """Normal-cell skips 1, 0, 2, 3 (reduce cell full of skips from the start): DARTS+ stops after
    epoch 2, the first with 2 skips in the normal cell, and returns that epoch's genotype."""
    seq = [_cells(1, 4, tag=0), _cells(0, 4, tag=1), _cells(2, 0, tag=2), _cells(3, 0, tag=3)]
    genotype, epochs = _search(tmp_path, seq, "darts_plus")
    assert genotype["tag"] == 2 and epochs == [0, 1, 2]
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert "2 skip connections" in last["early_stop"]


def test_darts_plus_ignores_skips_outside_the_normal_cell(tmp_path):
    seq = [_cells(1, 4, tag=0), _cells(1, 3, tag=1), _cells(0, 4, tag=2)]
    genotype, epochs = _search(tmp_path, seq, "darts_plus")
    assert genotype["tag"] == 2 and epochs == [0, 1, 2]


def test_darts_plus_waits_for_the_warmup_to_end(tmp_path):
    """During a weight-only warmup the decoded genotype is the random initial one: not judged."""
    seq = [_cells(3, tag=0), _cells(1, tag=1), _cells(2, tag=2), _cells(0, tag=3)]
    genotype, epochs = _search(tmp_path, seq, "darts_plus", warmup_epochs=1)
    assert genotype["tag"] == 2 and epochs == [0, 1, 2]


def test_skip_rise_returns_the_epoch_before_the_rise(tmp_path):
    """Total skip counts 1, 1, 3: the rise after epoch 2 stops the search with the epoch-1 genotype."""
    seq = [_cells(1, tag=0), _cells(0, 1, tag=1), _cells(2, 1, tag=2), _cells(0, tag=3)]
    genotype, epochs = _search(tmp_path, seq, "skip_rise")
    assert genotype["tag"] == 1 and epochs == [0, 1, 2]


def test_no_rule_runs_every_epoch(tmp_path):
    seq = [_cells(0, tag=0), _cells(4, 4, tag=1), _cells(4, 4, tag=2)]
    genotype, epochs = _search(tmp_path, seq, None)
    assert genotype["tag"] == 2 and epochs == [0, 1, 2]


def test_a_stopped_search_resumes_to_its_kept_genotype(tmp_path):
    seq = [_cells(1, tag=0), _cells(2, tag=1), _cells(0, tag=2)]
    _search(tmp_path, seq, "darts_plus")
    batch = {"image": torch.zeros(1)}
    out = run_search(Scripted(seq), torch.nn.Linear(1, 1), [batch], [batch], 3, torch.device("cpu"),
                     tmp_path, tmp_path / "last.pt", early_stop="darts_plus")
    assert out.genotype["tag"] == 1


def test_early_stop_names_are_checked():
    with pytest.raises(UserError, match="early_stop='darts'.*darts_plus"):
        EarlyStop("darts")
    no_cells = Genotype("vipnas_mbv3", {"stages": [{"depth": 1}]})
    with pytest.raises(UserError, match="no 'normal' cell"):
        EarlyStop("darts_plus").check_space(no_cells)
    EarlyStop("skip_rise").check_space(no_cells)  # counts skip_connect anywhere: fine


def test_stop_on_skip_rise_is_a_deprecated_alias():
    from nas.search import _early_stop_rule
    assert _early_stop_rule(OmegaConf.create({"stop_on_skip_rise": True, "early_stop": None})) == "skip_rise"
    assert _early_stop_rule(OmegaConf.create({"stop_on_skip_rise": False, "early_stop": "darts_plus"})) \
        == "darts_plus"
    with pytest.raises(UserError, match="stop_on_skip_rise"):
        _early_stop_rule(OmegaConf.create({"stop_on_skip_rise": True, "early_stop": "darts_plus"}))
