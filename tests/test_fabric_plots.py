"""Fabric drawings (one panel per body part) and the fabric's arch-weight trajectories with cell/link names.

The expected cells, links and backbone inputs below are worked out by hand from the genotype and the fabric's
geometry (depth 4, cut 2: layer 2 holds scales 0 and 1, layer 3 only scale 0; layer 2 reads the backbone)."""
from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.text import Annotation

from nas.engine.search_loop import arch_weights_record
from nas.genotype import Genotype, GenotypeError, save
from nas.plots import (CELL_GID, CELL_LABEL_GID, HEAD_GID, INPUT_GID, LINK_COLORS, LINK_GID, SLOT_GID,
                       arch_weights_figure, fabric_figure, plot_arch_weights, plot_fabric, read_arch_weights)
from nas.tools import plot_genotype
from search_spaces.fabric import FabricSpace
from tests.helpers import REPO_ROOT, module_cmd, run_env

ARGS = dict(depth=4, cut=2, base_width=4, backbone_width=4, parts="coco_3")
KEYPOINTS = [[5, 6, 7, 8, 9, 10], [0, 1, 2, 3, 4], [11, 12, 13, 14, 15, 16]]
SLOTS = {(2, 0), (2, 1), (3, 0)}  # every position of the fabric, in every part
CELLS = [  # per part: (layer, scale) -> (ops, links)
    {(2, 0): (["sep_conv_3x3"], ["same", "coarser"]), (2, 1): (["sep_conv_3x3"], ["same", "finer", "coarser"]),
     (3, 0): (["sep_conv_3x3"], ["same", "coarser"])},
    {(2, 0): (["skip_connect"], ["coarser"]), (3, 0): (["skip_connect"], ["same"])},  # (2, 1) pruned
    {(2, 0): ([["skip_connect", "dil_conv_3x3"]], ["same"]), (2, 1): ([["skip_connect", "dil_conv_3x3"]], ["finer"]),
     (3, 0): ([["skip_connect", "dil_conv_3x3"]], ["same", "coarser"])},
]
# (source, cell) per kept link, sources at layer 1 being the backbone's maps; worked out from CELLS by hand.
LINKS = [
    {((1, 0), (2, 0)), ((1, 1), (2, 0)), ((1, 1), (2, 1)), ((1, 0), (2, 1)), ((1, 2), (2, 1)),
     ((2, 0), (3, 0)), ((2, 1), (3, 0))},
    {((1, 1), (2, 0)), ((2, 0), (3, 0))},
    {((1, 0), (2, 0)), ((1, 0), (2, 1)), ((2, 0), (3, 0)), ((2, 1), (3, 0))},
]
BACKBONE = [{0, 1, 2}, {1}, {0}]  # the backbone maps layer 2 reads, per part
LINK_KINDS = [{"same": 3, "finer": 1, "coarser": 3}, {"same": 1, "finer": 0, "coarser": 1},
              {"same": 2, "finer": 1, "coarser": 1}]


def _genotype(cells=CELLS) -> Genotype:
    parts = [{"keypoints": kps, "cells": [{"layer": j, "scale": s, "ops": ops, "links": links}
                                          for (j, s), (ops, links) in sorted(part.items())]}
             for kps, part in zip(KEYPOINTS, cells)]
    return Genotype(space="fabric", space_args=dict(ARGS), genotype={"parts": parts})


def _centre(patch) -> tuple[int, int]:
    """(layer, scale) of a box drawn at (x, y) = (layer, -scale)."""
    x, y = patch.get_x() + patch.get_width() / 2, patch.get_y() + patch.get_height() / 2
    return round(x), -round(y)


def _boxes(ax, gid: str) -> list[tuple[int, int]]:
    return sorted(_centre(p) for p in ax.patches if p.get_gid() == gid)


def _arrows(ax, gid: str) -> list[Annotation]:
    return [t for t in ax.texts if isinstance(t, Annotation) and t.get_gid() == gid]


def _ends(arrow: Annotation) -> tuple[tuple[int, int], tuple[int, int]]:
    (x0, y0), (x1, y1) = arrow.xyann, arrow.xy
    return (round(x0), -round(y0)), (round(x1), -round(y1))


def test_the_hand_built_genotype_is_a_valid_fabric():
    FabricSpace(**ARGS).validate(_genotype())  # what the drawing is of can be built


def test_each_part_draws_its_kept_cells_and_links_over_every_position():
    fig = fabric_figure(_genotype())
    panels = [ax for ax in fig.axes if ax.patches]
    assert len(panels) == 3
    for p, ax in enumerate(panels):
        assert ax.get_title() == f"part {p}: keypoints {', '.join(map(str, KEYPOINTS[p]))}"
        assert _boxes(ax, SLOT_GID) == sorted(SLOTS), p  # pruned positions are still outlined
        assert _boxes(ax, CELL_GID) == sorted(CELLS[p]), p  # ... but not drawn as kept
        links = _arrows(ax, LINK_GID)
        assert len(links) == sum(len(kept) for _, kept in CELLS[p].values()), p
        assert {_ends(a) for a in links} == LINKS[p], p
        for kind, n in LINK_KINDS[p].items():  # each link kind in its colour
            assert sum(to_rgba(a.arrow_patch.get_edgecolor()) == to_rgba(LINK_COLORS[kind]) for a in links) == n
        assert _boxes(ax, INPUT_GID) == sorted((1, s) for s in BACKBONE[p]), p
        assert _boxes(ax, HEAD_GID) == [(4, 0)], p  # after the last layer's 1/4 cell
        assert [_ends(a) for a in _arrows(ax, HEAD_GID)] == [((3, 0), (4, 0))], p


def test_cell_boxes_name_their_ops_and_sums():
    fig = fabric_figure(_genotype())
    texts = [[t.get_text() for t in ax.texts if t.get_gid() == CELL_LABEL_GID] for ax in fig.axes if ax.patches]
    assert texts[0] == ["sep 3x3"] * 3
    assert texts[1] == ["skip"] * 2
    assert texts[2] == ["skip\n+ dil 3x3"] * 3


def test_an_unpruned_cell_is_refused_not_drawn():
    cells = [dict(CELLS[0]), dict(CELLS[1]), dict(CELLS[2])]
    cells[1][(2, 1)] = (["skip_connect"], ["same"])  # (3, 0) reads only "same": this cell reaches no head
    with pytest.raises(GenotypeError, match="do not reach the head"):
        fabric_figure(_genotype(cells))


def test_plot_fabric_writes_a_png(tmp_path):
    out = plot_fabric(_genotype(), tmp_path / "sub" / "fabric.png")
    image = cv2.imread(str(out))
    assert image is not None
    assert image.shape[1] > 2 * image.shape[0], image.shape  # three panels side by side
    ink = float((image.min(axis=2) < 200).mean())
    assert 0.01 < ink < 0.5, ink


def test_plot_genotype_cli_draws_a_fabric_genotype_file(tmp_path):
    path = save(_genotype(), tmp_path / "genotype.json")
    proc = subprocess.run(module_cmd("nas.tools.plot_genotype", str(path)), capture_output=True, text=True,
                          timeout=120, env=run_env(tmp_path), cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert cv2.imread(str(tmp_path / "genotype.png")) is not None


def test_plot_genotype_refuses_a_broken_fabric_in_one_line(tmp_path, capsys):
    data = _genotype().to_dict()
    data["genotype"]["parts"][1]["cells"][0]["links"] = ["finer"]  # layer 2, scale 0 has no finer link
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exit_info:
        plot_genotype.main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "links" in err[0], err
    assert not (tmp_path / "bad.png").exists()


# ---------------------------------------------------------------- arch-weight trajectories

# The fabric's betas per part: per cell (layer 2 scale 0, layer 2 scale 1, layer 3 scale 0) same, finer, coarser.
BETA_NAMES = ["L2 S0 same", "L2 S0 finer", "L2 S0 coarser", "L2 S1 same", "L2 S1 finer", "L2 S1 coarser",
              "L3 S0 same", "L3 S0 finer", "L3 S0 coarser"]
OPS = ["none", "skip_connect", "dil_conv_3x3", "sep_conv_3x3"]


def _fabric_records(epochs: int = 3, labels: bool = True) -> list[dict]:
    """Records as the search writes them for a 3-part fabric (one alpha row per part), with weights that are a
    known function of (epoch, part, entry)."""
    records = []
    for epoch in range(epochs):
        weights = {}
        for p in range(3):
            weights[f"p{p}"] = [[0.1 * epoch, 0.2, 0.3, 0.4 - 0.1 * epoch]]
            weights[f"beta_p{p}"] = [epoch + p + i / 10 for i in range(9)]
        record = {"epoch": epoch, "primitives": OPS, "weights": weights}
        if labels:
            record["labels"] = {**{f"p{p}": ["edge 0"] for p in range(3)},
                                **{f"beta_p{p}": BETA_NAMES for p in range(3)}}
        records.append(record)
    return records


def _by_title(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def test_fabric_betas_are_named_by_cell_and_link(tmp_path):
    path = tmp_path / "arch_weights.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _fabric_records()))
    records = read_arch_weights(path)
    panels = _by_title(arch_weights_figure(records))
    for p in range(3):
        lines = panels[f"beta_p{p} weights"].get_lines()
        assert [line.get_label() for line in lines] == BETA_NAMES
        np.testing.assert_allclose(lines[4].get_ydata(), [e + p + 0.4 for e in range(3)])  # L2 S1 finer
        assert len({line.get_color() for line in lines[3:6]}) == 1  # one colour per cell
        assert [line.get_linestyle() for line in lines[:3]] == ["-", "--", ":"]  # one style per link
        alpha = panels[f"p{p}: edge 0"].get_lines()
        assert [line.get_label() for line in alpha] == OPS
        np.testing.assert_allclose(alpha[3].get_ydata(), [0.4, 0.3, 0.2])
    assert plot_arch_weights(path, tmp_path / "aw.png").stat().st_size > 1000


def test_fabric_records_without_labels_name_cells_by_number():
    panels = _by_title(arch_weights_figure(_fabric_records(labels=False)))
    labels = [line.get_label() for line in panels["beta_p1 weights"].get_lines()]
    assert labels[:4] == ["cell 0 same", "cell 0 finer", "cell 0 coarser", "cell 1 same"]
    assert "p2: row 0" in panels  # not a DARTS edge name


def test_the_supernet_names_its_arch_weights_and_the_search_records_them():
    space = FabricSpace(**ARGS, input_nodes=2, alpha_sharing="cell")
    supernet = space.supernet()
    supernet.betas["p1"].data.zero_()
    supernet.betas["p1"].data[1, 1] = 5.0  # cell 1 of the positions (layer 2, scale 1): its finer link
    record = json.loads(json.dumps(arch_weights_record(supernet, 7)))  # as arch_weights.jsonl holds it
    labels = record["labels"]
    assert set(labels) == set(record["weights"]) == {"p0", "p1", "p2", "beta_p0", "beta_p1", "beta_p2"}
    assert labels["beta_p0"] == BETA_NAMES
    assert labels["p2"] == ["L2 S0 e0", "L2 S0 e1", "L2 S1 e0", "L2 S1 e1", "L3 S0 e0", "L3 S0 e1"]
    for key, names in labels.items():
        assert len(names) == len(record["weights"][key]), key
    betas = record["weights"]["beta_p1"]
    assert labels["beta_p1"][int(np.argmax(betas))] == "L2 S1 finer"
    panels = _by_title(arch_weights_figure([record]))
    assert "p0: L3 S0 e1" in panels and "beta_p2 weights" in panels
    plain = FabricSpace(**ARGS).supernet().arch_weight_labels()  # alpha_sharing=part: one row per edge
    assert plain["p0"] == ["edge 0"]
