"""DARK decoding (nas.pose.decode, method="dark") against heatmaps rendered here with numpy."""
from __future__ import annotations

import numpy as np
import pytest

from nas.pose.decode import decode_heatmaps

H, W = 24, 32  # heatmap rows, columns
# crop whose inverse affine is the identity: image coords == heatmap coords (pixel-centre convention)
CENTER = np.array([(W - 1) / 2.0, (H - 1) / 2.0])
SCALE = np.array([float(W), float(H)])


def gaussian(x0: float, y0: float, sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2.0 * sigma ** 2)).astype(np.float32)


def decode(heatmap: np.ndarray, method: str, sigma: float = 2.0) -> np.ndarray:
    preds, _ = decode_heatmaps(heatmap[None, None], CENTER[None], SCALE[None], method=method, sigma=sigma)
    return preds[0, 0]


def test_identity_crop_maps_heatmap_pixels_to_themselves():
    # peak exactly on pixel (12, 9): both decoders return it unchanged (no neighbour is higher)
    for method in ("quarter", "dark"):
        np.testing.assert_allclose(decode(gaussian(12.0, 9.0, 2.0), method), [12.0, 9.0], atol=1e-4)


def test_dark_recovers_subpixel_peak_where_quarter_cannot():
    heatmap = gaussian(10.3, 7.6, 2.0)
    # by hand: argmax (10, 8); right neighbour (11) nearer than (9) -> +0.25; upper (7) nearer -> -0.25
    np.testing.assert_allclose(decode(heatmap, "quarter"), [10.25, 7.75], atol=1e-6)
    dark = decode(heatmap, "dark")
    assert np.abs(dark - [10.3, 7.6]).max() < 0.05, dark
    assert np.linalg.norm(dark - [10.3, 7.6]) < np.linalg.norm(np.array([10.25, 7.75]) - [10.3, 7.6])


# peaks at least 3 sigma from the border: nearer, the smoothing's mirrored border bends the log-quadratic
@pytest.mark.parametrize("x0,y0,sigma", [(4.55, 12.9, 1.5), (20.7, 6.2, 2.0), (15.5, 11.5, 3.0)])
def test_dark_error_small_for_other_positions_and_sigmas(x0, y0, sigma):
    dark = decode(gaussian(x0, y0, sigma), "dark", sigma=sigma)
    assert np.abs(dark - [x0, y0]).max() < 0.05, dark


def test_dark_falls_back_on_the_border_and_keeps_maxvals():
    heatmaps = np.stack([gaussian(0.0, 7.6, 2.0), np.zeros((H, W), np.float32)])[None]  # (1, 2, H, W)
    quarter, qmax = decode_heatmaps(heatmaps, CENTER[None], SCALE[None], method="quarter")
    dark, dmax = decode_heatmaps(heatmaps, CENTER[None], SCALE[None], method="dark")
    np.testing.assert_allclose(dark, quarter)  # argmax in column 0: no Newton step there
    np.testing.assert_array_equal(dmax, qmax)
    assert dmax[0, 1, 0] == 0.0


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="dark"):
        decode(gaussian(3.0, 3.0, 1.0), "argmax")


def test_prediction_path_passes_the_decoder_through():
    """results_from_heatmaps (what retrain/evaluate use) decodes with DARK when asked."""
    from nas.pose.predict import results_from_heatmaps
    heatmaps = gaussian(10.3, 7.6, 2.0)[None, None]  # (1, 1, h, w), peak at a known sub-pixel spot
    meta = {"image_id": [1], "center": [[W / 2 - 0.5, H / 2 - 0.5]], "scale": [[W, H]], "score": [1.0],
            "index": [0]}
    quarter = results_from_heatmaps(heatmaps, meta)[0]["keypoints"][:2]
    dark = results_from_heatmaps(heatmaps, meta, decode="dark", sigma=2.0)[0]["keypoints"][:2]
    assert quarter == pytest.approx([10.25, 7.75])
    assert dark == pytest.approx([10.3, 7.6], abs=0.05)
