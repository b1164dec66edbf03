"""Cell graphs and architecture-weight plots: real PNGs, and figures whose arrows match the genotype."""
from __future__ import annotations

import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest
from matplotlib.text import Annotation

from nas.genotype import load
from nas.plots import EDGE_GID, LABEL_GID, arch_weights_figure, cells_figure, plot_arch_weights, plot_cells
from nas.plots import read_arch_weights
from nas.tools import plot_genotype
from tests.helpers import REPO_ROOT, module_cmd, run_env

DARTS = REPO_ROOT / "genotypes" / "darts_cells_synthetic_seed0.json"
PLAIN = REPO_ROOT / "genotypes" / "weak_plain_conv.json"
# What input 0 and 1 of each cell type are (search_spaces/cells.py: s0, s1): words the node must show.
INPUT_WORDS = {"normal": ("k-2", "k-1"), "reduce": ("k-2", "k-1"), "fusion": ("skip", "upsampled")}


def _non_white_fraction(png) -> float:
    image = cv2.imread(str(png))
    assert image is not None, f"{png} is not an image cv2 can read"
    return float((image.min(axis=2) < 200).mean()), image.shape


def test_plot_cells_writes_a_png_with_a_drawing(tmp_path):
    out = plot_cells(load(DARTS), tmp_path / "sub" / "cells.png")
    ink, shape = _non_white_fraction(out)
    assert shape[0] >= 300 and shape[1] >= 900, shape  # three panels side by side
    assert 0.005 < ink < 0.5, ink  # lines and labels, not a blank (or black) canvas


def _node_ids(ax, kind: str) -> dict[tuple[float, float], int]:
    """Position -> genotype index (0, 1 inputs, 2 + i node i) of the node boxes, read from their text."""
    ids = {}
    for t in ax.texts:
        if t.get_gid() in (EDGE_GID, LABEL_GID) or isinstance(t, Annotation):
            continue
        text = t.get_text().replace("\n", " ")
        pos = tuple(np.round(t.get_position(), 6))
        if text.isdigit():
            ids[pos] = 2 + int(text)
        for index, word in enumerate(INPUT_WORDS[kind]):
            if word in text:
                ids[pos] = index
    return ids


def test_every_genotype_edge_is_one_labelled_arrow_between_the_right_nodes():
    genotype = json.loads(DARTS.read_text())
    steps = genotype["space_args"]["steps"]
    fig = cells_figure(load(DARTS))
    assert len(fig.axes) == 3
    for ax, kind in zip(fig.axes, ("normal", "reduce", "fusion")):
        edges = genotype["genotype"][kind]
        arrows = [t for t in ax.texts if isinstance(t, Annotation) and t.get_gid() == EDGE_GID]
        labels = [t.get_text() for t in ax.texts if t.get_gid() == LABEL_GID]
        assert len(arrows) == len(labels) == 2 * steps, kind
        assert sorted(labels) == sorted(op for op, _ in edges), kind
        ids = _node_ids(ax, kind)
        assert sorted(ids.values()) == list(range(2 + steps)), (kind, ids)
        drawn = sorted((ids[tuple(np.round(a.xyann, 6))], ids[tuple(np.round(a.xy, 6))]) for a in arrows)
        assert drawn == sorted((src, 2 + n // 2) for n, (_, src) in enumerate(edges)), kind


def test_plot_genotype_script_default_output_beside_the_genotype(tmp_path):
    copy = tmp_path / "genotype.json"
    shutil.copy(DARTS, copy)
    plot_genotype.main([str(copy)])
    assert _non_white_fraction(tmp_path / "genotype.png")[0] > 0.005


def test_plot_genotype_refuses_a_space_without_cells(tmp_path):
    out = tmp_path / "x.png"
    proc = subprocess.run(module_cmd("nas.tools.plot_genotype", str(PLAIN), "--out", str(out)), capture_output=True,
                          text=True, timeout=120, env=run_env(tmp_path), cwd=REPO_ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no cell graph" in lines[0] and "plain_conv" in lines[0], proc.stderr
    assert not out.exists()


def _fake_jsonl(path, epochs=5, edges=9, primitives=("none", "skip_connect", "sep_conv_3x3"), beta=True):
    """Weights that are a known function of (epoch, edge, op), so a plotted point can be checked."""
    rng = np.random.default_rng(0)
    records = []
    for epoch in range(epochs):
        weights = {}
        for kind in ("normal", "reduce", "fusion"):
            raw = rng.random((edges, len(primitives))) + 0.1
            weights[kind] = (raw / raw.sum(axis=1, keepdims=True)).tolist()
        if beta:
            weights["beta_normal"] = (np.arange(edges) / edges + epoch).tolist()
        records.append({"epoch": epoch, "primitives": list(primitives), "weights": weights})
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 5, "prim')  # still appending
    return records


def test_plot_arch_weights_draws_every_op_of_every_edge(tmp_path):
    records = _fake_jsonl(tmp_path / "arch_weights.jsonl")
    assert len(read_arch_weights(tmp_path / "arch_weights.jsonl")) == 5  # half-written line skipped
    out = plot_arch_weights(tmp_path / "arch_weights.jsonl", tmp_path / "aw.png")
    assert _non_white_fraction(out)[0] > 0.01
    fig = arch_weights_figure(records)
    grid = np.array(fig.axes[:4 * 9]).reshape(4, 9)  # 3 cell types + the beta row, 9 edges wide
    for row, kind in enumerate(("normal", "reduce", "fusion")):
        for edge in range(9):
            lines = grid[row, edge].get_lines()
            assert [line.get_label() for line in lines] == records[0]["primitives"]
            want = [r["weights"][kind][edge][2] for r in records]  # op 2 over the epochs
            np.testing.assert_allclose(lines[2].get_ydata(), want)
    beta_lines = grid[3, 0].get_lines()
    assert len(beta_lines) == 9
    np.testing.assert_allclose(beta_lines[4].get_ydata(), [4 / 9 + e for e in range(5)])


def test_plot_alphas_cli_takes_a_run_directory(tmp_path):
    _fake_jsonl(tmp_path / "arch_weights.jsonl", epochs=2, edges=5, beta=False)
    proc = subprocess.run(module_cmd("nas.tools.plot_alphas", str(tmp_path)), capture_output=True, text=True,
                          timeout=120, env=run_env(tmp_path), cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert _non_white_fraction(tmp_path / "arch_weights.png")[0] > 0.01


@pytest.mark.parametrize("content", ["", "not json\n{}\n"])
def test_unusable_jsonl_is_a_user_error(tmp_path, content):
    (tmp_path / "arch_weights.jsonl").write_text(content)
    proc = subprocess.run(module_cmd("nas.tools.plot_alphas", str(tmp_path)), capture_output=True, text=True,
                          timeout=120, env=run_env(tmp_path), cwd=REPO_ROOT)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_pareto_plot_draws_the_front_and_every_feasible_point(tmp_path):
    from nas.plots import pareto_figure, plot_pareto
    evaluated = [{"AP": 0.1, "GFLOPs": 1.0, "violations": []}, {"AP": 0.3, "GFLOPs": 2.0, "violations": []},
                 {"AP": 0.2, "GFLOPs": 3.0, "violations": []}, {"GFLOPs": 9.0, "violations": ["gflops"]}]
    report = {"score": "AP", "cost": "GFLOPs", "constraints": {"gflops": 5.0},
              "front": evaluated[:2], "evaluated": evaluated}
    ax = pareto_figure(report).axes[0]
    scatter, front_line = ax.collections[0], ax.lines[0]
    assert len(scatter.get_offsets()) == 3  # the infeasible candidate is not drawn
    assert list(front_line.get_xdata()) == [1.0, 2.0] and list(front_line.get_ydata()) == [0.1, 0.3]
    assert any(list(line.get_xdata()) == [5.0, 5.0] for line in ax.lines[1:])  # the limit
    png = plot_pareto(report, tmp_path / "p.png")
    assert png.stat().st_size > 1000
