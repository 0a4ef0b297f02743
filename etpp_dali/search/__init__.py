"""The search wing: ``etpp search``, the bands of a schedule found stage by stage.

In import order (each module imports only those before it): what is searched (:mod:`.space`),
what a schedule may spend (:mod:`.budget`), the pure search over any ``proxy(schedule) -> top1``
callable (:mod:`.sequential`), one proxy run continued from another's stage end and stopped at
a stage end (:mod:`.segments`), the proxy training on a seeded subset (:mod:`.proxy`), the files a
search writes (:mod:`.report`), the wall-clock budget measured on this machine
(:mod:`.wallclock`) and the command put together (:mod:`.run`).
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
