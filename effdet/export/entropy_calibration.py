"""Activation ranges by entropy calibration, the method of TensorRT's IInt8EntropyCalibrator2.

TAO's int8 engines (and this package's TensorRT path) are calibrated that way: each activation's
histogram of |x| is clipped at the threshold whose 128-level quantisation loses the least
information (the Kullback-Leibler divergence between the clipped histogram, outliers folded into
its last bin, and its quantised copy; Migacz, "8-bit inference with TensorRT", GTC 2017).
Min/max ranges instead follow the rare images on which a network's activations are a hundred
times their usual size: on a D0 trained for the demo, 5 of 64 calibration images set ranges of
±300 where the rest peak near 1, and int8 lost 10 of its 11.5 AP points.

ONNX Runtime's own entropy calibrator cannot stand in: through `quantize_static` it always
uses 128 histogram bins for 128 quantised ones, so its only candidate threshold is the maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from effdet.errors import EffdetError

HISTOGRAM_BINS = 2048
QUANTIZED_BINS = 128

Run = Callable[[np.ndarray], Sequence[np.ndarray]]


def _xlogx(values: np.ndarray) -> np.ndarray:
    safe = np.where(values > 0, values, 1.0)
    return np.where(values > 0, values * np.log(safe), 0.0)


def kl_divergences(histogram: np.ndarray, quantized_bins: int = QUANTIZED_BINS) -> np.ndarray:
    """KL divergence of each candidate clipping of `histogram`, from the narrowest to none.

    Entry k is the candidate that keeps `quantized_bins + k` bins: the reference P is those bins
    with every count beyond added to the last one; Q merges them into `quantized_bins` levels of
    `kept // quantized_bins` bins (the last level takes the remainder) and spreads each level's
    count evenly over its bins where P is non-zero. Infinite where Q is empty where P is not.
    Every candidate costs O(1) from cumulative sums: within a level Q is constant, so the
    divergence reduces to sums of p·log p and of each level's count times log(its mean).
    """
    counts = np.asarray(histogram, dtype=np.float64)
    bins = counts.size
    total = counts.sum()
    kept = np.arange(quantized_bins, bins + 1)
    if total == 0:
        return np.zeros(kept.size)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    cumulative_xlogx = np.concatenate([[0.0], np.cumsum(_xlogx(counts))])
    cumulative_nonzero = np.concatenate([[0], np.cumsum(counts > 0)])

    last_bin_count = total - cumulative[kept - 1]  # the last kept bin with the outliers
    p_xlogx = cumulative_xlogx[kept - 1] + _xlogx(last_bin_count)

    merged = kept // quantized_bins
    inner_levels = {}
    for width in np.unique(merged):
        edges = np.arange(quantized_bins) * width
        level_counts = np.diff(cumulative[edges])
        filled = level_counts > 0
        level_nonzero = np.diff(cumulative_nonzero[edges])[filled]
        inner_levels[width] = float(np.sum(
            level_counts[filled] * np.log(level_counts[filled] / level_nonzero)))
    inner = np.array([inner_levels[width] for width in merged])

    last_start = (quantized_bins - 1) * merged
    last_level_count = cumulative[kept] - cumulative[last_start]
    last_level_nonzero = (cumulative_nonzero[kept - 1] - cumulative_nonzero[last_start]
                          + (last_bin_count > 0))
    last_level_p = total - cumulative[last_start]
    with np.errstate(divide="ignore", invalid="ignore"):
        last = np.where(last_level_p > 0,
                        last_level_p * np.log(last_level_count / np.maximum(last_level_nonzero, 1)),
                        0.0)
        divergence = (p_xlogx - inner - last) / total + np.log(cumulative[kept] / total)
    empty_q = ((last_level_p > 0) & (last_level_count == 0)) | (cumulative[kept] == 0)
    return np.where(empty_q, np.inf, divergence)


def entropy_threshold(histogram: np.ndarray, quantized_bins: int = QUANTIZED_BINS) -> int:
    """How many bins of `histogram` (of |x|, from 0) the least-divergent clipping keeps.

    All of them when that clipping would clip most values: the divergence then degenerates
    rather than finds outliers. Values far from zero (a sigmoid's SE gates in [0.1, 0.9], a
    constant map) fold into the last kept bin as a spike that its quantised copy matches
    exactly, so the least divergence clips just above the smallest value; on a BCCD D0 that
    took 100 of 587 activations to one level and int8 AP from 0.041 to 0.
    """
    counts = np.asarray(histogram, dtype=np.float64)
    kept = quantized_bins + int(np.argmin(kl_divergences(counts, quantized_bins)))
    return kept if 2 * counts[kept:].sum() <= counts.sum() else counts.size


def entropy_ranges(run: Run, names: Sequence[str],
                   batches: Callable[[], Iterator[np.ndarray]]) -> dict[str, tuple[float, float]]:
    """(low, high) of each tensor in `names`, clipped at its entropy threshold.

    `run(batch)` returns the tensors in the order of `names`. Two passes over `batches()`, as
    TensorRT calibrates: the first finds each tensor's extremes, the second fills histograms of
    |x| over [0, max |x|] with fixed bins, so they add up exactly across batches. Only one
    batch's activations are held at a time.
    """
    low = np.full(len(names), np.inf)
    high = np.full(len(names), -np.inf)
    for batch in batches():
        for index, values in enumerate(run(batch)):
            low[index] = min(low[index], float(values.min()))
            high[index] = max(high[index], float(values.max()))
    if not np.isfinite(low).all():
        raise EffdetError("int8 calibration got no batches")
    largest = np.maximum(np.abs(low), np.abs(high))
    histograms = np.zeros((len(names), HISTOGRAM_BINS))
    for batch in batches():
        for index, values in enumerate(run(batch)):
            if largest[index] > 0:
                histograms[index] += np.histogram(np.abs(values), HISTOGRAM_BINS,
                                                  (0.0, largest[index]))[0]
    ranges = {}
    for index, name in enumerate(names):
        threshold = largest[index]
        if threshold > 0:
            threshold *= entropy_threshold(histograms[index]) / HISTOGRAM_BINS
        ranges[name] = (max(float(low[index]), -threshold), min(float(high[index]), threshold))
    return ranges
