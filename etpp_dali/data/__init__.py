"""The data wing: where encoded images come from, checked before any work.

Inspecting a file (:mod:`.probe`: header and end marker, a fast path for JPEG; many at once in
worker processes: :mod:`.headers`, :mod:`.parallel`), the compact index
of a source (:mod:`.index`, :mod:`.store`: one memory-mapped file per source, built once per node
under a lock, rescanned incrementally), scanning an ImageFolder tree (:mod:`.scan`,
:mod:`.folders`), file lists and WebDataset shards (:mod:`.lists`, :mod:`.shards`), the sources
a loader reads (:mod:`.sources`, array-backed :mod:`.records`; a batch's bytes or paths:
:mod:`.reads`), the class-balanced
hold-out and subsets drawn from them (:mod:`.splits`), ``etpp check-data``
(:mod:`.check`) and the embedded demo set (:mod:`.demo`). Files the decoders would not take are
listed once and left out.
"""

from etpp_dali.util.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "DataError": "scan",
    "ImageRecord": "scan",
    "BadFile": "scan",
    "scan_dataset": "scan",
    "scan_split": "scan",
    "inspect_image": "scan",
    "RecordTable": "records",
    "BufferPool": "reads",
    "read_batch": "reads",
    "Source": "sources",
    "open_source": "sources",
    "holdout_split": "splits",
    "holdout_indices": "splits",
    "balanced_subset": "splits",
    "check_data": "check",
    "DemoSpec": "demo",
    "demo_dataset": "demo",
    "write_demo_dataset": "demo",
})
