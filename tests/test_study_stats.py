"""Study statistics against hand-worked values, and the study figures as real PNG files.

Each expected number is worked out in the comment above it; none was read off the code's output.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from nas.errors import UserError
from nas.study.figures import plot_proxy_fidelity, plot_search_vs_random
from nas.study.stats import (bootstrap_ci, kendall_tau, paired_bootstrap_ci, paired_difference,
                             precision_at_k, sparse_kendall_tau, spearman)

# ---------------------------------------------------------------- Kendall tau-b


def test_kendall_tau_without_ties():
    # x = 1 2 3 4, y = 1 3 2 4. Of the 6 pairs only (2nd, 3rd) swaps order (3 > 2):
    # C = 5, D = 1, no ties -> tau = (5 - 1) / 6 = 2/3.
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)


def test_kendall_tau_b_with_ties():
    # x = 1 2 2 3, y = 1 3 2 2; pairs (i, j):
    #   (0,1) x up, y up C   (0,2) x up, y up C   (0,3) x up, y up C
    #   (1,2) x tied         (1,3) x up, y down D (2,3) y tied
    # C = 3, D = 1; n0 = 4*3/2 = 6; n1 (tied x pairs) = 1; n2 (tied y pairs) = 1
    # tau-b = (3 - 1) / sqrt((6 - 1)(6 - 1)) = 2/5.
    assert kendall_tau([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.4)


def test_kendall_tau_is_nan_for_a_constant_side_and_sign_flips_with_order():
    assert math.isnan(kendall_tau([1, 2, 3], [5, 5, 5]))
    assert math.isnan(kendall_tau([7, 7], [1, 2]))
    # y reversed: every pair discordant -> -1.
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


# ---------------------------------------------------------------- Spearman


def test_spearman_with_ties_uses_average_ranks():
    # x = 1 2 2 3 -> ranks 1, 2.5, 2.5, 4 (the two 2s share ranks 2 and 3)
    # y = 1 3 2 2 -> ranks 1, 4, 2.5, 2.5
    # mean rank 2.5 on both sides; deviations dx = -1.5 0 0 1.5, dy = -1.5 1.5 0 0
    # sum dx*dy = 2.25; sum dx^2 = sum dy^2 = 4.5 -> rho = 2.25 / 4.5 = 0.5.
    assert spearman([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.5)
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))


# ---------------------------------------------------------------- sparse Kendall tau


def test_sparse_kendall_tau_ties_values_in_one_bin():
    x = [0.10, 0.20, 0.30, 0.40]
    y = [0.50, 0.62, 0.58, 0.80]
    # Plain: only (2nd, 3rd) is discordant (0.62 > 0.58): C = 5, D = 1 -> 4/6.
    assert kendall_tau(x, y) == pytest.approx(2 / 3)
    # threshold 0.1: bins floor(v/0.1 + 0.5): x -> 1 2 3 4; y -> 5, 6 (6.2+.5), 6 (5.8+.5), 8.
    # The swapped pair now ties in y: C = 5, D = 0, n1 = 0, n2 = 1 -> 5 / sqrt(6 * 5) = 5/sqrt(30).
    assert sparse_kendall_tau(x, y, 0.1) == pytest.approx(5 / math.sqrt(30))


def test_sparse_kendall_tau_rounds_half_up():
    # threshold 1: x bins floor(1.5)=1, floor(2.5)=2, floor(3.5)=3 -> 1 2 3;
    # y = 1.4, 0.5, 3.0 -> floor(1.9)=1, floor(1.0)=1, floor(3.5)=3 -> 1 1 3 (0.5 rounds UP to 1).
    # Pairs: (0,1) tied in y, (0,2) C, (1,2) C: C = 2, D = 0, n0 = 3, n2 = 1
    # -> 2 / sqrt(3 * 2) = 2/sqrt(6). Round-half-even would put 0.5 in bin 0 and give (2-1)/3.
    assert sparse_kendall_tau([1, 2, 3], [1.4, 0.5, 3.0], 1.0) == pytest.approx(2 / math.sqrt(6))


# ---------------------------------------------------------------- precision@k

SCORE = [0.9, 0.1, 0.8, 0.3, 0.5]
TRUTH = [0.7, 0.6, 0.2, 0.9, 0.1]


@pytest.mark.parametrize("k, expected", [
    (1, 0.0),      # score top-1 {0}, truth top-1 {3}: no overlap
    (2, 1 / 2),    # score {0, 2}, truth {3, 0}: {0}
    (3, 1 / 3),    # score {0, 2, 4}, truth {3, 0, 1}: {0}
    (4, 3 / 4),    # score {0, 2, 4, 3}, truth {3, 0, 1, 2}: {0, 2, 3}
    (5, 1.0),      # k = n: both sets are everything
])
def test_precision_at_k_by_hand(k, expected):
    assert precision_at_k(SCORE, TRUTH, k) == pytest.approx(expected)


def test_precision_at_k_breaks_ties_by_lower_index():
    # score ties three ways at 0.5; lower index first -> top-2 by score = {0, 1};
    # truth top-2 = {1 (0.9), 2 (0.8)}; overlap {1} -> 1/2 (a higher-index tie-break gives {1, 2} -> 1).
    assert precision_at_k([0.5, 0.5, 0.5, 0.1], [0.2, 0.9, 0.8, 0.1], 2) == pytest.approx(0.5)
    # truth ties at 0.3: top-2 by truth = {3 (0.9), 0}; score top-2 = {1, 2} -> 0
    # (a higher-index tie-break would pick {3, 2} and give 1/2).
    assert precision_at_k([0.1, 0.9, 0.8, 0.2], [0.3, 0.3, 0.3, 0.9], 2) == 0.0


# ---------------------------------------------------------------- bootstrap_ci


def test_bootstrap_ci_enumerates_two_values_exactly():
    # [0, 1]: 2**2 = 4 ordered resamples (0,0) (0,1) (1,0) (1,1), means 0, .5, .5, 1
    # -> P(0) = 1/4, P(.5) = 1/2, P(1) = 1/4; cdf(0) = .25, cdf(.5) = .75, cdf(1) = 1.
    # level .5 -> q = .25, .75; inverted cdf = smallest value with cdf >= q: 0 and 0.5.
    assert bootstrap_ci([0, 1], level=0.5) == (0.0, 0.5)
    # level .95 -> q = .025 -> 0, q = .975 -> 1.
    assert bootstrap_ci([0, 1], level=0.95) == (0.0, 1.0)
    # Exact enumeration draws nothing, so the seed cannot matter.
    assert bootstrap_ci([0, 1], level=0.5, seed=123) == (0.0, 0.5)


def test_bootstrap_ci_enumerates_three_values_exactly():
    # [0, 0, 3]: 27 resamples; the mean is j, the number of times the 3 is drawn (3*j/3),
    # j ~ Binomial(3, 1/3): counts j=0: 2^3 = 8, j=1: 3*2^2 = 12, j=2: 3*2 = 6, j=3: 1 (sum 27).
    # cdf: 0 -> 8/27 = .296, 1 -> 20/27 = .741, 2 -> 26/27 = .963, 3 -> 1.
    # level .8: q = .1 -> 0; q = .9 -> 2 (cdf(1) = .741 < .9 <= .963).
    assert bootstrap_ci([0, 0, 3], level=0.8) == pytest.approx((0.0, 2.0))
    # level .95: q = .975 > 26/27 -> 3.
    assert bootstrap_ci([0, 0, 3], level=0.95) == pytest.approx((0.0, 3.0))
    # level .4: q = .3 -> 1 (8/27 = .296 < .3); q = .7 -> 1 (.7 <= 20/27).
    assert bootstrap_ci([0, 0, 3], level=0.4) == pytest.approx((1.0, 1.0))


def test_bootstrap_ci_other_statistic_and_single_value():
    # max over the 4 resamples of [0, 1]: 0 once, 1 three times -> cdf(0) = .25;
    # level .5 -> q = .25 -> 0, q = .75 -> 1.
    assert bootstrap_ci([0, 1], level=0.5, statistic=np.max) == (0.0, 1.0)
    assert bootstrap_ci([0.7]) == (0.7, 0.7)


def test_bootstrap_ci_sampled_is_seeded_and_inside_the_range():
    values = [0.1, 0.4, 0.2, 0.9, 0.5, 0.3, 0.8]  # 7**7 > 2000 resamples: sampled
    a = bootstrap_ci(values, resamples=2000, seed=5)
    assert a == bootstrap_ci(values, resamples=2000, seed=5)
    # Every resample mean lies in [min, max], and 2000 draws of a 7-value mean are not all equal.
    assert 0.1 <= a[0] < a[1] <= 0.9
    # The sample mean (3.2/7 = .457) is inside a 95% interval of its own bootstrap.
    assert a[0] < 3.2 / 7 < a[1]


# ---------------------------------------------------------------- searched vs random


def test_paired_difference_by_hand():
    # seed 0: 0.6 - mean(0.5, 0.3) = 0.6 - 0.4 = 0.2; seed 1: 0.4 - mean(0.4, 0.2, 0.3) = 0.1
    # -> (0.2 + 0.1) / 2 = 0.15.
    assert paired_difference([0.6, 0.4], [[0.5, 0.3], [0.4, 0.2, 0.3]]) == pytest.approx(0.15)


def test_paired_bootstrap_ci_when_search_always_wins_by_a_margin():
    searched = [0.75, 0.875, 1.0]
    randoms = [[0.5, 0.625], [0.25, 0.75], [0.5, 0.875]]
    # Each seed's searched AP beats its best random by 0.125 (.75-.625, .875-.75, 1-.875), so every
    # resampled difference, a mean of such seeds' (searched - mean of drawn randoms), is >= 0.125.
    # The largest possible is seed 1 drawn with only 0.25s: 0.875 - 0.25 = 0.625.
    low, high = paired_bootstrap_ci(searched, randoms, level=0.95, resamples=2000, seed=0)
    assert 0.125 <= low <= high <= 0.625
    assert low >= 0.1
    assert (low, high) == paired_bootstrap_ci(searched, randoms, level=0.95, resamples=2000, seed=0)


def test_paired_bootstrap_ci_is_zero_when_every_difference_is_zero():
    # Each random AP equals its seed's searched AP (binary fractions, so the means are exact).
    low_high = paired_bootstrap_ci([0.5, 0.25], [[0.5, 0.5], [0.25, 0.25, 0.25]], level=0.9,
                                   resamples=500, seed=3)
    assert low_high == (0.0, 0.0)


def test_paired_bootstrap_ci_resamples_the_randoms_too():
    # One seed: seed resampling alone would always give 1 - mean(0, 1) = 0.5. Resampling its two
    # randoms gives means 0 (p 1/4), .5 (1/2), 1 (1/4) -> differences 1, .5, 0, so a 95% interval
    # over 2000 draws must reach from 0 to 1 (each end has probability 1/4 per draw).
    assert paired_bootstrap_ci([1.0], [[0.0, 1.0]], level=0.95, resamples=2000, seed=0) == (0.0, 1.0)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("call", [
    lambda: kendall_tau([1, 2, 3], [1, 2]),
    lambda: kendall_tau([1], [1]),
    lambda: kendall_tau([1, float("nan")], [1, 2]),
    lambda: spearman([1, 2], [1, 2, 3]),
    lambda: sparse_kendall_tau([1, 2], [1, 2], 0),
    lambda: sparse_kendall_tau([1, 2], [1, 2], -0.5),
    lambda: precision_at_k([1, 2, 3], [3, 2, 1], 0),
    lambda: precision_at_k([1, 2, 3], [3, 2, 1], 4),
    lambda: precision_at_k([1, 2, 3], [3, 2], 1),
    lambda: bootstrap_ci([]),
    lambda: bootstrap_ci([1, 2], level=1.0),
    lambda: bootstrap_ci([1, float("inf")]),
    lambda: paired_difference([0.5, 0.6], [[0.1]]),
    lambda: paired_difference([0.5], [[]]),
    lambda: paired_bootstrap_ci([0.5], [[0.1]], level=0.0, resamples=10, seed=0),
    lambda: paired_bootstrap_ci([0.5], [[0.1]], level=0.9, resamples=0, seed=0),
])
def test_bad_input_is_a_user_error(call):
    with pytest.raises(UserError):
        call()


# ---------------------------------------------------------------- figures


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


ROWS = [{"seed": 0, "searched": 0.52, "random": [0.41, 0.45, 0.39], "metric": "AP"},
        {"seed": 1, "searched": None, "random": [0.40], "metric": "AP"},  # still running: skipped
        {"seed": 2, "searched": 0.49, "random": [0.47, 0.44], "metric": "AP"}]
POINTS = [{"score": 0.30, "final": 0.41, "seed": 0}, {"score": 0.35, "final": 0.45, "seed": 0},
          {"score": 0.28, "final": 0.39, "seed": 1}, {"score": 0.40, "final": 0.47, "seed": 2}]


@pytest.mark.parametrize("n", [0, 1, 3])
def test_plot_search_vs_random_writes_a_png(tmp_path, n):
    out = plot_search_vs_random(ROWS[:n], tmp_path / "a" / "b" / "search_vs_random.png")
    assert out == tmp_path / "a" / "b" / "search_vs_random.png" and _is_png(out)


def test_plot_search_vs_random_with_only_unfinished_seeds(tmp_path):
    out = plot_search_vs_random([ROWS[1]], tmp_path / "running.png")
    assert _is_png(out)


@pytest.mark.parametrize("n", [0, 1, 4])
def test_plot_proxy_fidelity_writes_a_png(tmp_path, n):
    out = plot_proxy_fidelity(POINTS[:n], tmp_path / "sub" / "fidelity.png", "tau = 0.50")
    assert out == tmp_path / "sub" / "fidelity.png" and _is_png(out)


def test_sparse_kendall_tau_can_bin_the_retrained_side_only():
    # x = losses-like scores in other units, y = APs; threshold 0.1 bins y = [0.31, 0.33, 0.52] into
    # [3, 3, 5]; x = [-0.0030, -0.0020, -0.0010] stays as it is (all distinct).
    # pairs: (0,1): x up, y tied -> neither; (0,2), (1,2): concordant. tau-b = 2 / sqrt(3 * 2) = 0.8165
    # Binning x with 0.1 as well would put every x in bin 0 -> constant -> NaN.
    x, y = [-0.0030, -0.0020, -0.0010], [0.31, 0.33, 0.52]
    assert sparse_kendall_tau(x, y, 0.1, bin_x=False) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(sparse_kendall_tau(x, y, 0.1))
