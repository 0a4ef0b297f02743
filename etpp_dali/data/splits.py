"""Class-balanced draws from a source: the hold-out of ``--val-split`` and the proxy's subset.

One rule serves both: per class, ``round(fraction x n_c)`` of its members, at least one, drawn
without replacement with a seeded generator. ``etpp train`` and ``etpp search`` call
:func:`holdout_indices` with the run's seed, so ``--val-split`` holds out the same images in
both; the search draws its training subset from what is left with :func:`balanced_subset`.
"""

from __future__ import annotations

import numpy as np

from etpp_dali.data.sources import Source

__all__ = ["balanced_subset", "class_balanced_draw", "holdout_indices", "holdout_split"]

# generator streams: the hold-out's is the one `etpp train --val-split` has always used, so a
# run resumed across versions sees the same validation images
_HOLDOUT_STREAM = 0xDA7A
_SUBSET_STREAM = 0x5EA2C4


def class_balanced_draw(rng: np.random.Generator, labels: np.ndarray, pool: np.ndarray, fraction: float, *,
                        keep_one: bool) -> np.ndarray:
    """Per class of ``labels[pool]``, ``round(fraction x n_c)`` members of ``pool`` (at least one;
    with ``keep_one`` at most ``n_c - 1``, so the class keeps an image), sorted. Classes are drawn
    in label order, each with one ``rng.choice``."""
    picked = []
    for c in np.unique(labels[pool]):
        members = pool[labels[pool] == c]
        k = max(1, int(round(len(members) * fraction)))
        if keep_one:
            k = min(k, len(members) - 1)
        if k > 0:
            picked.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=np.int64)


def holdout_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``--val-split`` of a training set with ``labels``: (kept, held out) sample indices,
    both sorted. Every class with two or more images holds out at least one and keeps at least
    one; a class of one image stays in training."""
    labels = np.asarray(labels)
    pool = np.arange(len(labels))
    held = class_balanced_draw(np.random.default_rng([seed, _HOLDOUT_STREAM]), labels, pool, fraction,
                               keep_one=True)
    return np.setdiff1d(pool, held), held


def balanced_subset(labels: np.ndarray, pool: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The search's proxy training set: per class, ``round(fraction x n_c)`` members of ``pool``
    (at least one), sorted; ``pool`` is what :func:`holdout_indices` kept, or every index."""
    rng = np.random.default_rng([seed, _SUBSET_STREAM])
    return class_balanced_draw(rng, np.asarray(labels), np.asarray(pool), fraction, keep_one=False)


def holdout_split(source: Source, fraction: float, seed: int) -> tuple[Source, Source]:
    """``source`` split by :func:`holdout_indices` into (train, val) sources (views of the same
    index); the files the scan left out stay reported with train."""
    kept, held = holdout_indices(source.labels, fraction, seed)
    return source.subset(kept, source.bad), source.subset(held)
