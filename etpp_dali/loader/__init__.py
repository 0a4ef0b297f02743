"""The loader wing: the curriculum and validation loaders, as torch batches from DALI.

Flow inside the wing: a plan says which images make each batch and with which draws
(:mod:`.plans`); the DALI graphs turn them into tensors (:mod:`.graphs`); the runner builds and
runs a graph and recovers from decode failures (:mod:`.runner`); the loaders tie them to the
schedule (:mod:`.loaders`, settings in :mod:`.settings`); echo and replay reuse decoded images at
small bands (:mod:`.echo`); :mod:`.dali_iterator` speaks DALI's PyTorch iterator protocol.
"""

from etpp_dali.util.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "CurriculumLoader": "loaders",
    "ValidationLoader": "loaders",
    "LoaderSettings": "settings",
    "DALIStyleIterator": "dali_iterator",
    "distributed_shard": "loaders",
})
