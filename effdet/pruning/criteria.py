"""How filters are ranked and how many survive (TAO's prune semantics).

Each layer's statistic is the L2 norm of every output filter's kernel (a depthwise kernel:
per channel), normalised per layer, then merged across the layers of a channel group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NORMALIZERS = ("max", "L2")
EQUALIZATIONS = ("union", "intersection", "arithmetic_mean", "geometric_mean")


def filter_norms(kernel: np.ndarray, depthwise: bool = False) -> np.ndarray:
    """L2 norm per output channel of a [kh, kw, in, out] kernel (depthwise [kh, kw, c, 1]:
    per channel c)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if depthwise:
        return np.sqrt(np.square(kernel).sum(axis=(0, 1, 3)))
    return np.sqrt(np.square(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0))


def normalize(norms: np.ndarray, normalizer: str) -> np.ndarray:
    """`max`: divide by the largest norm; `L2`: by the L2 norm of the vector, times its
    length (TAO's `normalize_stat`, nvidia_tao_tf1/core/pruning/utils.py), so a `-pth` chosen
    for TAO keeps the same channels here."""
    norms = np.asarray(norms, dtype=np.float64)
    if normalizer == "max":
        scale = norms.max(initial=0.0)
    elif normalizer == "L2":
        scale = np.sqrt(np.sum(np.square(norms))) / norms.size if norms.size else 0.0
    else:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
    return norms / scale if scale > 0 else np.zeros_like(norms)


def equalize(stats: Sequence[np.ndarray], criterion: str) -> np.ndarray:
    """Merge the normalised statistics of a group's layers, channel by channel."""
    stacked = np.stack([np.asarray(s, dtype=np.float64) for s in stats])
    if criterion == "union":
        return stacked.max(axis=0)
    if criterion == "intersection":
        return stacked.min(axis=0)
    if criterion == "arithmetic_mean":
        return stacked.mean(axis=0)
    if criterion == "geometric_mean":
        with np.errstate(divide="ignore"):
            return np.exp(np.log(stacked).mean(axis=0))
    raise ValueError(f"equalization criterion must be one of {EQUALIZATIONS}, got {criterion!r}")


def kept_count(stat: np.ndarray, threshold: float, granularity: int, min_filters: int) -> int:
    """Filters above `threshold`, at least min(min_filters, all), rounded up to a multiple of
    `granularity`, never more than there are."""
    total = len(stat)
    count = max(int(np.count_nonzero(stat > threshold)), min(min_filters, total))
    count = -(-count // granularity) * granularity
    return min(count, total)


def kept_indices(stat: np.ndarray, count: int) -> np.ndarray:
    """The `count` highest-ranked channels, in their original order (ties: lower index)."""
    order = np.argsort(-np.asarray(stat), kind="stable")
    return np.sort(order[:count])
