"""What ``etpp search`` chooses from (:class:`SearchSpace`), what it records of each schedule it
considers (:class:`Trial`), and the error that names a bad flag (:class:`SearchError`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from etpp_dali.curriculum.schedule_file import MIN_BAND, scale_band

__all__ = ["DEFAULT_CANDIDATES", "SearchError", "SearchSpace", "Trial", "max_proxy_runs", "max_proxy_stages"]

DEFAULT_CANDIDATES = (96, 128, 160, 192, 224)  # at 224 px; scaled to the resolution


class SearchError(ValueError):
    """Search settings that cannot be used; the message names the flag."""


@dataclass(frozen=True)
class SearchSpace:
    """What the search chooses from: ``candidates`` are the bands below ``resolution``, ascending."""

    resolution: int
    stages: int
    candidates: tuple[int, ...]
    tolerance: float = 0.5

    @classmethod
    def create(cls, *, resolution: int, stages: int = 10, candidates: Sequence[int] | None = None,
               tolerance: float = 0.5) -> "SearchSpace":
        """Validate the flags; default candidates are 96, 128, 160, 192, 224 scaled to R."""
        if not isinstance(resolution, int) or resolution < MIN_BAND:
            raise SearchError(f"--resolution {resolution!r} must be an integer >= {MIN_BAND}")
        if stages < 1:
            raise SearchError(f"--stages {stages} must be >= 1")
        if not (tolerance >= 0 and math.isfinite(tolerance)):
            raise SearchError(f"--tolerance {tolerance} must be >= 0 (points of proxy top-1)")
        if candidates is None:
            candidates = [scale_band(b, resolution) for b in DEFAULT_CANDIDATES]
        for band in candidates:
            if band > resolution:
                raise SearchError(f"--candidates: {band} is above --resolution {resolution}; "
                                  f"give bands between {MIN_BAND} and {resolution}")
            if band < MIN_BAND:
                raise SearchError(f"--candidates: {band} is below {MIN_BAND} pixels; "
                                  f"give bands between {MIN_BAND} and {resolution}")
        below = tuple(sorted({int(b) for b in candidates if b < resolution}))
        if not below:
            raise SearchError(f"--candidates: give at least one band below --resolution {resolution}")
        return cls(resolution, int(stages), below, float(tolerance))

    def magnitudes(self) -> list[float]:
        """The preset rule, m = stage index, scaled to the stage count (0 .. 10 (S-1)/S)."""
        return [round(10.0 * k / self.stages, 4) for k in range(self.stages)]

    def candidates_from(self, floor: int | None) -> list[int]:
        """The candidates a stage tries, smallest first, none below ``floor``."""
        return [b for b in self.candidates if floor is None or b >= floor]


def max_proxy_runs(space: SearchSpace) -> int:
    """An upper bound on the proxy runs: the first reference, then per stage its candidates
    from the previous choice up to the accepted one (S + n in all)."""
    return space.stages + len(space.candidates)


def max_proxy_stages(space: SearchSpace, score_after: int | None) -> int:
    """An upper bound on the stages the proxy runs train, per seed, when every candidate continues
    from the accepted path and is scored ``score_after`` stages after its own (None: at the end):
    the accepted path at most once (``S``), and each of the ``S + n`` candidate runs at most
    ``score_after + 1`` stages; never more than ``S + n`` whole runs from scratch."""
    S = space.stages
    per_candidate = S if score_after is None else min(S, score_after + 1)
    return min(S + max_proxy_runs(space) * per_candidate, max_proxy_runs(space) * S)


@dataclass
class Trial:
    """One schedule the search considered: a stage's reference or one of its candidates."""

    stage: int
    band: int
    role: str                       # "reference" or "candidate"
    bands: tuple[int, ...]
    status: str                     # "run" or "unaffordable" (never run)
    top1: float | None = None
    reference_top1: float | None = None
    accepted: bool = False
    compute: float | None = None    # the schedule's compute, full-resolution epochs
    cost: float | None = None       # what its proxy run trained, in the budget's unit (per seed, whole data set)
    scored_at: int | None = None    # the stage at whose end its proxy top-1 was taken

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["bands"] = ",".join(map(str, self.bands))
        return row
