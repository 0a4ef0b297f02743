"""The search wing: ``etpp search``, the bands of a schedule found stage by stage.

What is searched (:mod:`.space`), what a schedule may spend (:mod:`.budget`, measured on this
machine for a wall-clock budget by :mod:`.wallclock`), the pure search over any
``proxy(schedule) -> top1`` callable (:mod:`.sequential`), the proxy training on a seeded subset
(:mod:`.proxy`), the files a search writes (:mod:`.report`) and the command put together
(:mod:`.run`). The arrows run one way: space <- budget <- sequential; proxy <- wallclock <- run.
"""

from etpp_dali.util.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "SearchError": "space",
    "SearchSpace": "space",
    "Trial": "space",
    "allocate_epochs": "budget",
    "ComputeBudget": "budget",
    "WallClockBudget": "budget",
    "sequential_search": "sequential",
    "SearchResult": "sequential",
    "trials_table": "report",
    "run_search": "run",
})
