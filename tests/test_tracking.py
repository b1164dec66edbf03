"""The `logger` config group (nas/tracking.py): none, csv and wandb (offline, no network).

The wandb tests start three offline runs in all (about a second each on the 2-core machine: wandb starts
its service process on the first); wandb's settings, cache and staging folders are pointed into
tmp_path and its server at a closed local port, so nothing leaves this machine or lands in $HOME."""
from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from nas.config import check_config, register
from nas.errors import UserError
from nas.tracking import (RUN_ID_FILE, CsvLogger, ExperimentLogger, NoLogger, WandbLogger, arch_weight_scalars,
                          backfill, flatten_record, make_logger)

REPO_ROOT = Path(__file__).resolve().parents[1]
WANDB_CFG = {"_target_": "nas.tracking.WandbLogger", "project": "posenas-test", "mode": "offline", "tags": ["ci"]}


def _compose(overrides: list[str]):
    register()
    with initialize_config_module("conf", version_base="1.3"):
        return compose("search", overrides=overrides)


# ---- what a record becomes ----------------------------------------------------------------------------

def test_numbers_are_metrics_and_strings_and_nested_values_are_text():
    record = {"epoch": 3, "loss": 0.5, "early": True, "early_stop": "skips rose", "AP": None,
              "genotype": {"normal": [["conv_3x3", 0]]}, "skipped_images": {"a.jpg": 2}}
    scalars, text = flatten_record(record)
    assert scalars == {"epoch": 3, "loss": 0.5, "early": 1}
    assert text == {"early_stop": "skips rose", "genotype": '{"normal":[["conv_3x3",0]]}',
                    "skipped_images": '{"a.jpg":2}'}


def test_arch_weights_become_one_scalar_per_edge_and_op():
    # two edges x two ops in `normal`; `beta_normal` is per edge, and as long as `primitives` on purpose:
    # a top-level list is edges, never ops
    record = {"epoch": 4, "primitives": ["skip", "conv"],
              "weights": {"normal": [[0.25, 0.75], [0.5, 0.5]], "beta_normal": [0.4, 0.6]}}
    assert arch_weight_scalars(record) == {
        "arch/normal/e0/skip": 0.25, "arch/normal/e0/conv": 0.75,
        "arch/normal/e1/skip": 0.5, "arch/normal/e1/conv": 0.5,
        "arch/beta_normal/e0": 0.4, "arch/beta_normal/e1": 0.6}


# ---- csv ----------------------------------------------------------------------------------------------

def _csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_csv_grows_columns_and_a_resume_replaces_the_rows_past_its_checkpoint(tmp_path):
    first = make_logger(OmegaConf.create({"_target_": "nas.tracking.CsvLogger", "filename": "metrics.csv"}),
                        tmp_path, {}, rank=0)
    assert isinstance(first, CsvLogger)
    first.log_metrics({"epoch": 0, "loss": 1.0}, step=0)
    first.log_metrics({"epoch": 1, "loss": 0.5, "AP": 0.25}, step=1)  # a new key: a new column for every row
    first.log_metrics({"epoch": 2, "loss": 0.25, "AP": 0.5, "genotype": {"n": ["a"]}}, step=2)
    first.finish()
    assert _csv(tmp_path / "metrics.csv") == [
        ["step", "epoch", "loss", "AP", "genotype"],
        ["0", "0", "1.0", "", ""],
        ["1", "1", "0.5", "0.25", ""],
        ["2", "2", "0.25", "0.5", '{"n":["a"]}']]

    # killed after epoch 2's row but before its checkpoint: the resumed run starts again at epoch 2
    second = make_logger({"_target_": "nas.tracking.CsvLogger"}, tmp_path, {}, rank=0)
    second.log_metrics({"epoch": 2, "loss": 0.3, "lr": 0.1}, step=2)
    second.log_metrics({"epoch": 3, "loss": 0.2}, step=3)
    second.log_metrics({"AP": 0.75}, step=3)  # the same step in the same run: one row
    assert _csv(tmp_path / "metrics.csv") == [
        ["step", "epoch", "loss", "AP", "genotype", "lr"],
        ["0", "0", "1.0", "", "", ""],
        ["1", "1", "0.5", "0.25", "", ""],
        ["2", "2", "0.3", "", "", "0.1"],  # the old epoch-2 row is gone whole, its AP and genotype too
        ["3", "3", "0.2", "0.75", "", ""]]

    # a resume from an earlier checkpoint (epoch 0's) drops every later row
    third = make_logger({"_target_": "nas.tracking.CsvLogger"}, tmp_path, {}, rank=0)
    third.log_metrics({"epoch": 1, "loss": 0.4}, step=1)
    assert [row[:3] for row in _csv(tmp_path / "metrics.csv")] == [["step", "epoch", "loss"], ["0", "0", "1.0"],
                                                                   ["1", "1", "0.4"]]


def test_csv_refuses_to_take_over_a_file_it_did_not_write(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(UserError, match=r"metrics.csv exists but was not written by logger=csv"):
        make_logger({"_target_": "nas.tracking.CsvLogger"}, tmp_path, {}, rank=0)


def _write_history(run_dir: Path) -> None:
    """metrics.jsonl and arch_weights.jsonl of epochs 0..2, as MetricsLog writes them (with "time")."""
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "loss": 1.0 / (e + 1), "time": 100.0 + e}) + "\n" for e in range(3)))
    (run_dir / "arch_weights.jsonl").write_text("".join(
        json.dumps({"epoch": e, "primitives": ["a", "b"], "weights": {"normal": [[0.5, 0.5]]}, "time": 1.0}) + "\n"
        for e in range(3)))


class Recorder(ExperimentLogger):
    """Remembers what it was given, in order."""
    fresh = True

    def __init__(self):
        self.calls: list[tuple[str, int, dict]] = []

    def log_metrics(self, record, step):
        self.calls.append(("metrics", step, dict(record)))

    def log_arch_weights(self, record):
        self.calls.append(("arch", record["epoch"], dict(record)))


def test_backfill_gives_a_fresh_logger_the_epochs_before_the_resume_point_in_step_order(tmp_path):
    _write_history(tmp_path)
    recorder = Recorder()
    assert backfill(recorder, tmp_path, before_epoch=2) == 4  # epochs 0 and 1 of both files
    assert [(kind, step) for kind, step, _ in recorder.calls] == [("arch", 0), ("metrics", 0), ("arch", 1),
                                                                  ("metrics", 1)]
    assert recorder.calls[1][2] == {"epoch": 0, "loss": 1.0}  # MetricsLog's "time" is not a metric
    assert backfill(recorder, tmp_path, before_epoch=2) == 0  # once only

    csv_logger = make_logger({"_target_": "nas.tracking.CsvLogger"}, tmp_path, {}, rank=0)
    assert csv_logger.fresh and backfill(csv_logger, tmp_path, before_epoch=0) == 0  # a first start: nothing
    assert backfill(csv_logger, tmp_path, before_epoch=2) == 4
    csv_logger.log_metrics({"epoch": 2, "loss": 0.25}, step=2)
    assert _csv(tmp_path / "metrics.csv") == [["step", "epoch", "loss"], ["0", "0", "1.0"], ["1", "1", "0.5"],
                                              ["2", "2", "0.25"]]
    again = make_logger({"_target_": "nas.tracking.CsvLogger"}, tmp_path, {}, rank=0)  # metrics.csv exists
    assert not again.fresh and backfill(again, tmp_path, before_epoch=3) == 0


# ---- wandb --------------------------------------------------------------------------------------------

@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    """WANDB_MODE=offline; wandb's own folders in tmp_path; its server a closed port; no key, no run id."""
    home = tmp_path / "wandb_home"
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                     ("WANDB_ARTIFACT_DIR", "artifacts"), ("WANDB_DIR", "elsewhere")):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: a contact would fail at once
    for var in ("WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)
    return home


def _written(path: Path, texts: tuple[bytes, ...], timeout_s: float = 10.0) -> bytes:
    """The bytes of `path` once they hold every one of `texts`, or after `timeout_s`. wandb's service
    process writes the transaction log after `finish()` returns (measured: up to ~10 ms later; a process
    that exits right after `finish()` still gets it written)."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = path.read_bytes()
        if all(t in data for t in texts) or time.monotonic() > deadline:
            return data
        time.sleep(0.02)


def _offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_wandb_offline_run_lives_in_the_run_dir_and_a_resume_continues_its_id(tmp_path, offline_wandb, caplog):
    import wandb
    run_a, run_b = tmp_path / "run_a", tmp_path / "run_b"
    run_a.mkdir()
    (run_a / "genotype.json").write_text('{"genotype": {"normal": [["conv_3x3", 0]]}}\n')
    caplog.set_level(logging.INFO, logger="posenas")

    with make_logger(OmegaConf.create(WANDB_CFG), run_a, {"seed": 0, "strategy": {"unrolled": False}},
                     rank=0) as first:
        assert isinstance(first, WandbLogger) and not first.resumed
        run_id = (run_a / RUN_ID_FILE).read_text().strip()
        assert first.run.id == run_id
        first.log_arch_weights({"epoch": 0, "primitives": ["skip", "conv"], "weights": {"normal": [[0.25, 0.75]]}})
        first.log_metrics({"epoch": 0, "loss": 1.5, "genotype": {"normal": [["conv_3x3", 0]]}}, step=0)
        first.log_artifact(run_a / "genotype.json", "genotype")
        first.log_artifact(run_a / "pareto.png", "pareto")  # not written by this run: skipped
    [part1] = _offline_runs(run_a)
    assert part1.name.startswith("offline-run-") and part1.name.endswith(f"-{run_id}")
    log_file = part1 / f"run-{run_id}.wandb"  # wandb's transaction log: what `wandb sync` uploads
    data = _written(log_file, (b"posenas-test", b"loss", b"arch/normal/e0/conv", b"unrolled", b"genotype"))
    for text in (b"posenas-test", b"loss", b"arch/normal/e0/conv", b"unrolled", b"genotype"):
        assert text in data, text
    assert (part1 / "artifact_files" / "1-genotype" / "genotype.json").read_bytes() == \
        (run_a / "genotype.json").read_bytes()
    assert f"wandb sync {run_a / 'wandb'}" in caplog.text
    assert not (offline_wandb / "elsewhere").exists()  # WANDB_DIR does not move the run out of the run dir

    # the same run directory again (resume=true, a requeued job): the same id, a second offline part
    again = make_logger(OmegaConf.create(WANDB_CFG), run_a, {"seed": 0}, rank=0)
    assert again.resumed and again.run.id == run_id
    again.log_metrics({"epoch": 1, "loss": 1.0}, step=1)
    again.finish()
    # one transaction log per part, both of this id (a part started within the same second as the one
    # before gets wandb's suffix "-1" on its folder name, hence the look inside)
    assert [(p / f"run-{run_id}.wandb").is_file() for p in _offline_runs(run_a)] == [True, True]
    assert (run_a / RUN_ID_FILE).read_text().strip() == run_id

    # a new run directory: a new wandb run
    other = make_logger(OmegaConf.create(WANDB_CFG), run_b, {"seed": 1}, rank=0)
    other.finish()
    other_id = (run_b / RUN_ID_FILE).read_text().strip()
    assert other_id != run_id and len(_offline_runs(run_b)) == 1
    wandb.teardown()  # stop wandb's service process now rather than at exit


def test_only_rank_0_logs_and_none_or_disabled_start_nothing(tmp_path, monkeypatch):
    assert isinstance(make_logger(OmegaConf.create(WANDB_CFG), tmp_path, {}, rank=1), NoLogger)
    assert isinstance(make_logger(OmegaConf.create({}), tmp_path, {}, rank=0), NoLogger)  # logger=none
    assert isinstance(make_logger(None, tmp_path, {}, rank=0), NoLogger)
    monkeypatch.setenv("WANDB_MODE", "disabled")  # wins over logger.mode=offline
    disabled = make_logger(OmegaConf.create(WANDB_CFG), tmp_path, {}, rank=0)
    disabled.log_metrics({"loss": 1.0}, step=0)
    disabled.finish()
    assert disabled.run is None and list(tmp_path.iterdir()) == []  # no id file, no wandb folder


def test_logger_none_and_other_ranks_never_import_wandb(tmp_path):
    """In a fresh interpreter: checking the wandb config and building the logger of rank 1 or of
    logger=none leave wandb unimported (importing it costs ~0.4 s and starts nothing, but a run that
    did not ask for wandb must not need it installed)."""
    code = f"""
import sys
from omegaconf import OmegaConf
from nas.config import check_config
from nas.tracking import make_logger
cfg = OmegaConf.create({{"logger": {WANDB_CFG!r}}})
check_config(cfg)
make_logger(cfg.logger, {str(tmp_path)!r}, {{}}, rank=1)
make_logger(OmegaConf.create({{}}), {str(tmp_path)!r}, {{}}, rank=0)
assert "wandb" not in sys.modules, "wandb was imported"
"""
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


def test_a_garbled_run_id_file_is_a_user_error(tmp_path, offline_wandb):
    (tmp_path / RUN_ID_FILE).write_text("not an id!\n")
    with pytest.raises(UserError, match=rf"{RUN_ID_FILE} does not hold a wandb run id .*delete it"):
        make_logger(OmegaConf.create(WANDB_CFG), tmp_path, {}, rank=0)


# ---- the config group ---------------------------------------------------------------------------------

def test_logger_defaults_to_none_and_wandb_options_are_checked():
    assert OmegaConf.to_container(_compose([]).logger) == {}  # logger=none
    check_config(_compose(["logger=wandb", "logger.project=x", "logger.tags=[a,b]", "logger.mode=online"]))
    check_config(_compose(["logger=csv"]))
    with pytest.raises(UserError, match=r"^logger\.projet is not an option of nas\.tracking\.WandbLogger; its "
                                        r"options are project, entity, mode, tags, name, group$"):
        check_config(_compose(["logger=wandb", "+logger.projet=x"]))
    with pytest.raises(ConfigCompositionException, match=r"logger\.projet"):  # Hydra's own refusal, without +
        _compose(["logger=wandb", "logger.projet=x"])
    with pytest.raises(UserError, match=r"^logger\.mode='onlin' has the wrong type: .*one of 'offline', 'online', "
                                        r"'disabled'$"):
        check_config(_compose(["logger=wandb", "logger.mode=onlin"]))
    with pytest.raises(UserError, match=r"^logger\.tags='ci' has the wrong type"):
        check_config(_compose(["logger=wandb", "logger.tags=ci"]))


def test_a_bad_value_passed_in_python_is_refused_at_construction():
    with pytest.raises(UserError, match=r"logger.mode='onlin' is not a wandb mode"):
        make_logger({**WANDB_CFG, "mode": "onlin"}, ".", {}, rank=0)
    with pytest.raises(UserError, match=r"logger.filename='/tmp/x.csv' must be a file name inside"):
        make_logger({"_target_": "nas.tracking.CsvLogger", "filename": "/tmp/x.csv"}, ".", {}, rank=0)


def test_the_shipped_group_files_parse():
    for name in ("none", "csv", "wandb"):
        node = OmegaConf.load(REPO_ROOT / "conf" / "logger" / f"{name}.yaml")
        assert name == "none" or node._target_.startswith("nas.tracking.")
    assert json.dumps(OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "logger" / "none.yaml"))) == "{}"
