"""The search wing: ``etpp search``, the bands of a schedule found stage by stage.

A pure core that takes any ``proxy(schedule) -> top1`` callable (:func:`sequential_search`), the
budgets it spends, and the proxy training on a seeded subset (:mod:`.proxy`).
"""

from etpp_dali.util.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "sequential_search": "core",
    "SearchSpace": "core",
    "SearchError": "core",
    "run_search": "core",
    "trials_table": "core",
    "allocate_epochs": "core",
})
