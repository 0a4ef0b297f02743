"""The loader wing: the curriculum and validation loaders, as torch batches from DALI.

Flow inside the wing: a plan says which images make each batch (:mod:`.plans`) and the feeds
carry them to DALI with their draws (:mod:`.feeds`); the DALI graphs turn them into tensors
(:mod:`.graphs`); the runner builds and runs a graph and recovers from decode failures
(:mod:`.runner`); the loaders tie them to the schedule (:mod:`.loaders`, :mod:`.validation`),
built from one settings object (:mod:`.settings`); echo and replay reuse decoded images at small
bands (:mod:`.echo`); :mod:`.dali_iterator` speaks DALI's PyTorch iterator protocol.
"""

from etpp_dali.util.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "CurriculumLoader": "loaders",
    "ValidationLoader": "validation",
    "LoaderSettings": "settings",
    "DALIStyleIterator": "dali_iterator",
    "distributed_shard": "settings",
})
