"""Statistics of a search study: rank agreement, top-k overlap, bootstrap intervals.

Pure functions on plain sequences, so the study report and the tests can call them on a handful of
numbers. Where scipy has the statistic it computes it (Kendall tau-b, Spearman rho); what scipy lacks
(the sparse Kendall tau, precision@k, the exact small-sample bootstrap and the hierarchical
searched-minus-random bootstrap) is written here.

Bad input (mismatched lengths, too few points, NaN or inf, a parameter out of range) raises
`UserError`; a statistic that is undefined for valid input (a constant sequence has no ranking)
is NaN.
"""
from __future__ import annotations

import itertools
import math
from numbers import Integral, Real
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps

from nas.errors import UserError

Statistic = Callable[[np.ndarray], float]


# ---------------------------------------------------------------- input checks

def _finite(values: Sequence[float], name: str, min_len: int = 1) -> np.ndarray:
    """`values` as a 1-D float array; UserError when it is empty, nested or holds NaN/inf."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a list of numbers") from None
    if array.ndim != 1:
        raise UserError(f"{name} must be a flat list of numbers, got shape {array.shape}")
    if len(array) < min_len:
        raise UserError(f"{name} needs at least {min_len} value(s), got {len(array)}")
    if not np.isfinite(array).all():
        raise UserError(f"{name} holds NaN or inf at position {int(np.argmin(np.isfinite(array)))}; "
                        f"drop or fix the unfinished runs first")
    return array


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Two sequences of the same length, at least two points each (a rank needs a pair)."""
    xa, ya = _finite(x, "x"), _finite(y, "y")
    if len(xa) != len(ya):
        raise UserError(f"x and y must have the same length, got {len(xa)} and {len(ya)}")
    if len(xa) < 2:
        raise UserError(f"a rank correlation needs at least 2 points, got {len(xa)}")
    return xa, ya


def _level(level: float) -> float:
    if not isinstance(level, Real) or not 0 < level < 1:
        raise UserError(f"level must be a number strictly between 0 and 1, got {level!r}")
    return float(level)


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _percentiles(dist: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` interval of a bootstrap distribution.

    method="inverted_cdf" returns an actual value of the distribution (the smallest whose empirical
    cdf reaches q) instead of interpolating between two, so the interval of a small, exactly
    enumerated case can be checked by counting resamples by hand.
    """
    low, high = np.quantile(dist, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(low), float(high)


# ---------------------------------------------------------------- rank agreement

def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall tau-b of two paired sequences (ties in either count against neither order).

    NaN when one side is constant: it ranks nothing, so agreement is undefined rather than zero.
    """
    xa, ya = _pair(x, y)
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return float("nan")
    return float(sps.kendalltau(xa, ya, variant="b").statistic)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rho: Pearson correlation of the ranks, tied values sharing their average rank.

    NaN when one side is constant, as for `kendall_tau`.
    """
    xa, ya = _pair(x, y)
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return float("nan")
    return float(sps.spearmanr(xa, ya).statistic)


def sparse_kendall_tau(x: Sequence[float], y: Sequence[float], threshold: float, bin_x: bool = True) -> float:
    """Kendall tau-b after treating values closer than about `threshold` as the same rank.

    Yu et al. 2020 ("How to train your super-net") use this "sparse" tau so that accuracy
    differences below the noise of training do not count as ranking errors. Our definition: each
    value v of either sequence is put in bin floor(v / threshold + 0.5), i.e. rounded half up to
    the nearest multiple of `threshold` (half up, not numpy's round-half-to-even, so a bin's edges do
    not depend on whether its index is even); values in the same bin tie; the result is
    `kendall_tau` of the two binned sequences (NaN when a side falls in a single bin).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not math.isfinite(threshold) \
            or threshold <= 0:
        raise UserError(f"threshold must be a positive number, got {threshold!r}")
    xa, ya = _pair(x, y)
    xb = np.floor(xa / threshold + 0.5) if bin_x else xa  # bin_x=False: only y (e.g. retrained AP) is binned,
    return kendall_tau(xb, np.floor(ya / threshold + 0.5))  # for a score x in other units (a loss)


def precision_at_k(score: Sequence[float], truth: Sequence[float], k: int) -> float:
    """Share of the k best candidates by `truth` that are also among the k best by `score`.

    Both top-k sets order by value, highest first, and break ties by position, lower index first
    (a stable sort), so the result is deterministic when the proxy scores tie.
    """
    sa, ta = _finite(score, "score"), _finite(truth, "truth")
    if len(sa) != len(ta):
        raise UserError(f"score and truth must have the same length, got {len(sa)} and {len(ta)}")
    n = len(sa)
    if isinstance(k, bool) or not isinstance(k, Integral) or not 1 <= k <= n:
        raise UserError(f"k must be an integer from 1 to {n} (the number of candidates), got {k!r}")
    top_score = set(np.argsort(-sa, kind="stable")[:k].tolist())
    top_truth = set(np.argsort(-ta, kind="stable")[:k].tolist())
    return len(top_score & top_truth) / int(k)


# ---------------------------------------------------------------- bootstrap intervals

def _exact_count(n: int, resamples: int) -> bool:
    """Is n**n (the number of ordered resamples of n values) at most `resamples`?"""
    count = 1
    for _ in range(n):
        count *= n
        if count > resamples:
            return False
    return True


def bootstrap_ci(values: Sequence[float], level: float = 0.95, resamples: int = 10000, seed: int = 0,
                 statistic: Statistic = np.mean) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over `values`.

    When all n**n ordered resamples fit in `resamples`, every one is enumerated once, so the
    interval is exact and a small case can be counted by hand (`seed` is then unused); otherwise
    `resamples` resamples are drawn from numpy.random.default_rng(seed). The interval ends are
    inverted-cdf percentiles of the resampled statistic (see `_percentiles`). One value gives a
    zero-width interval at that value.
    """
    data = _finite(values, "values")
    level = _level(level)
    resamples = _positive_int(resamples, "resamples")
    n = len(data)
    if _exact_count(n, resamples):
        index = np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64)  # (n**n, n)
    else:
        index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    dist = np.array([statistic(data[row]) for row in index], dtype=float)
    return _percentiles(dist, level)


def _searched_randoms(searched: Sequence[float],
                      randoms: Sequence[Sequence[float]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-seed searched APs and per-seed lists of random APs, checked against each other."""
    s = _finite(searched, "searched")
    if isinstance(randoms, (str, bytes)) or not isinstance(randoms, Sequence):
        raise UserError("randoms must be a list (one entry per seed) of lists of random APs")
    if len(randoms) != len(s):
        raise UserError(f"searched and randoms must have one entry per seed each, got {len(s)} and "
                        f"{len(randoms)}")
    return s, [_finite(r, f"randoms[{i}]") for i, r in enumerate(randoms)]


def paired_difference(searched: Sequence[float], randoms: Sequence[Sequence[float]]) -> float:
    """Mean over seeds of (searched AP of the seed - mean of that seed's random APs)."""
    s, r = _searched_randoms(searched, randoms)
    return float(np.mean([s_i - r_i.mean() for s_i, r_i in zip(s, r)]))


def paired_bootstrap_ci(searched: Sequence[float], randoms: Sequence[Sequence[float]], level: float = 0.95,
                        resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of `paired_difference`, resampling both levels of the study.

    Seeds vary the data order and the search itself, and each seed's random baselines vary
    around it, so both are resampled: one resample draws the seeds with replacement, then for
    every drawn seed (independently each time it is drawn) its random APs with replacement; its
    value is the mean over drawn seeds of (searched - mean of the drawn randoms). Always sampled
    from numpy.random.default_rng(seed); inverted-cdf percentiles as in `bootstrap_ci`.
    """
    s, r = _searched_randoms(searched, randoms)
    level = _level(level)
    resamples = _positive_int(resamples, "resamples")
    rng = np.random.default_rng(seed)
    n_seeds = len(s)
    drawn = rng.integers(0, n_seeds, size=(resamples, n_seeds))  # which seed fills each slot
    diff = np.empty((resamples, n_seeds))
    for i in range(n_seeds):
        slots = drawn == i
        count = int(slots.sum())
        if count:
            picks = rng.integers(0, len(r[i]), size=(count, len(r[i])))  # one random draw per slot
            diff[slots] = s[i] - r[i][picks].mean(axis=1)
    return _percentiles(diff.mean(axis=1), level)
