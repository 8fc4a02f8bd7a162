"""Entropy calibration: TensorRT's KL-divergence thresholds, computed in O(1) per candidate."""

from __future__ import annotations

import numpy as np
import pytest

from effdet.errors import EffdetError
from effdet.export.entropy_calibration import (
    HISTOGRAM_BINS,
    entropy_ranges,
    entropy_threshold,
    kl_divergences,
)


def direct_divergences(histogram: np.ndarray, quantized_bins: int) -> np.ndarray:
    """The divergence of every candidate, built bin by bin as the algorithm states it."""
    counts = histogram.astype(np.float64)
    divergences = []
    for kept in range(quantized_bins, counts.size + 1):
        p = counts[:kept].copy()
        p[-1] += counts[kept:].sum()
        q = np.zeros(kept)
        width = kept // quantized_bins
        for level in range(quantized_bins):
            start, stop = level * width, (level + 1) * width
            if level == quantized_bins - 1:
                stop = kept
            nonzero = p[start:stop] != 0
            if nonzero.any():
                q[start:stop][nonzero] = counts[start:stop].sum() / nonzero.sum()
        p, q = p / p.sum(), q / q.sum() if q.sum() else q
        support = p > 0
        divergences.append(np.inf if (q[support] == 0).any()
                           else np.sum(p[support] * np.log(p[support] / q[support])))
    return np.array(divergences)


@pytest.mark.parametrize("bins, quantized_bins, kind", [
    (64, 8, "sparse"), (300, 32, "sparse"), (2048, 128, "sparse"), (700, 128, "tail"),
    (130, 16, "end"), (256, 16, "gap")])
def test_kl_divergences_equal_the_direct_computation(bins, quantized_bins, kind):
    rng = np.random.default_rng(bins)
    if kind == "sparse":
        counts = rng.integers(0, 5, bins) * (rng.random(bins) < 0.6)
    elif kind == "tail":
        counts = np.bincount((rng.exponential(1.0, 50_000) * 60).astype(int),
                             minlength=bins)[:bins]
    elif kind == "end":  # everything in the last bin: only keeping all of it is finite
        counts = np.zeros(bins, int)
        counts[-1] = 10
    else:  # an empty stretch before the outliers: clipping inside it leaves Q empty there
        counts = np.concatenate([rng.integers(1, 9, bins // 2), np.zeros(bins // 2 - 3, int),
                                 [4, 0, 2]])
    fast, direct = kl_divergences(counts, quantized_bins), direct_divergences(counts,
                                                                              quantized_bins)
    assert fast.shape == direct.shape == (bins - quantized_bins + 1,)
    np.testing.assert_array_equal(np.isinf(fast), np.isinf(direct))
    if kind in ("end", "gap"):
        assert np.isinf(direct).any()
    finite = np.isfinite(direct)
    np.testing.assert_allclose(fast[finite], direct[finite], rtol=1e-9, atol=1e-12)


def test_threshold_clips_rare_outliers_and_keeps_a_gate_far_from_zero():
    rng = np.random.default_rng(3)
    # Most values near 1, a few images' activations a hundred times that (the demo D0's case).
    values = np.abs(np.concatenate([rng.normal(0.0, 1.0, 200_000), rng.uniform(-300, 300, 60)]))
    histogram = np.histogram(values, HISTOGRAM_BINS, (0, values.max()))[0]
    threshold = entropy_threshold(histogram) * values.max() / HISTOGRAM_BINS
    assert 3.0 < threshold < 60.0 and np.mean(values > threshold) < 1e-3
    # A sigmoid's gate in [0.1, 0.85]: the least divergence alone clips it to its smallest value.
    gate = rng.uniform(0.1, 0.85, 100_000)
    histogram = np.histogram(gate, HISTOGRAM_BINS, (0, gate.max()))[0]
    degenerate = 128 + int(np.argmin(kl_divergences(histogram)))
    assert histogram[degenerate:].sum() > 0.99 * gate.size
    assert entropy_threshold(histogram) == HISTOGRAM_BINS


def test_ranges_add_histograms_over_batches_and_clip_symmetrically():
    rng = np.random.default_rng(5)
    batches = [rng.normal(0.0, 1.0, (4, 50, 50)).astype(np.float32) for _ in range(3)]
    batches[1][0, 0, :3] = [40.0, -60.0, 55.0]  # outliers in one batch only
    passes = []

    def source():
        passes.append(1)
        return iter(batches)

    def run(batch):  # a tensor straddling zero and a swish-like one, bounded below
        return [batch, batch / (1.0 + np.exp(-batch))]

    ranges = entropy_ranges(run, ["conv", "swish"], source)
    assert len(passes) == 2  # extremes first, then histograms over fixed bins
    everything = np.concatenate([b.ravel() for b in batches])
    largest = np.abs(everything).max()
    histogram = np.histogram(np.abs(everything), HISTOGRAM_BINS, (0, largest))[0]
    threshold = entropy_threshold(histogram) * largest / HISTOGRAM_BINS
    assert ranges["conv"] == pytest.approx((-threshold, threshold))
    assert threshold < 10.0
    low, high = ranges["swish"]
    swish = run(everything)[1]
    assert low == pytest.approx(swish.min()) and 0 < high < swish.max()
    with pytest.raises(EffdetError, match="no batches"):
        entropy_ranges(run, ["conv"], lambda: iter([]))
