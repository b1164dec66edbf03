"""beta-soft-argmax decoding (decode=soft_argmax), against hand-worked maps and an independent computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.pose.decode import DECODE_METHODS, decode_heatmaps, soft_argmax


def test_two_equal_peaks_average_and_the_quarter_step_follows_the_rounded_location():
    """Pixels (3, 2) and (4, 2) hold 1, the other 22 pixels of the 4x6 map 0: softmax(160 h) puts
    e^160 / (2 e^160 + 22) on each peak, so x = 3.5 and y = 2 to within e^-160. The rounded location
    floor(3.5 + 0.5) = 4 has its higher neighbour at x = 3 (1 against 0): a quarter step left, x = 3.25."""
    hm = np.zeros((1, 1, 4, 6), np.float32)
    hm[0, 0, 2, 3] = hm[0, 0, 2, 4] = 1.0
    coords, maxvals = soft_argmax(hm)
    assert coords[0, 0] == pytest.approx([3.5, 2.0], abs=1e-6)
    assert maxvals[0, 0, 0] == 1.0  # the map at the rounded location (4, 2)
    # a crop of the 6x4-pixel region centred at (2.5, 1.5): heatmap pixel = image pixel
    centers, scales = np.array([[2.5, 1.5]]), np.array([[6.0, 4.0]])
    preds, _ = decode_heatmaps(hm, centers, scales, method="soft_argmax")
    assert preds[0, 0] == pytest.approx([3.25, 2.0], abs=1e-5)


def test_a_flat_map_decodes_to_its_centre():
    """A constant map: softmax is uniform, the expectation is the centre ((w-1)/2, (h-1)/2)."""
    coords, _ = soft_argmax(np.full((1, 2, 5, 8), 0.3, np.float32))
    assert coords[0, 0] == pytest.approx([3.5, 2.0], abs=1e-6)


def test_soft_argmax_equals_an_independent_torch_computation():
    """torch.softmax over the flattened map and the pixel grid's expectation, written separately."""
    rng = np.random.default_rng(0)
    hm = rng.random((3, 4, 16, 12)).astype(np.float32) * 0.05
    hm[:, :, 5:8, 4:7] += 0.9  # a peak region, so beta matters
    coords, _ = soft_argmax(hm)
    t = torch.from_numpy(hm).double().flatten(2)
    prob = torch.softmax(160.0 * t, dim=2).view(3, 4, 16, 12)
    ys, xs = torch.meshgrid(torch.arange(16.0, dtype=torch.float64), torch.arange(12.0, dtype=torch.float64),
                            indexing="ij")
    expected = torch.stack([(prob * xs).sum((2, 3)), (prob * ys).sum((2, 3))], dim=-1).numpy()
    assert np.abs(coords - expected).max() < 1e-5


def test_soft_argmax_is_a_decoder_choice():
    assert "soft_argmax" in DECODE_METHODS
