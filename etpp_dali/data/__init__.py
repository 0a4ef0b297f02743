"""The data wing: where encoded images come from, checked before any work.

Scanning and validating an ImageFolder tree (:mod:`.scan`), the sources a loader reads (ImageFolder,
a ``path label`` list, WebDataset shards: :mod:`.sources`), the class-balanced hold-out and
subsets drawn from them (:mod:`.splits`) and the embedded demo set (:mod:`.demo`). Files the
decoders would not take are listed once and left out.
"""

from etpp_dali.util.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "DataError": "scan",
    "ImageRecord": "scan",
    "BadFile": "scan",
    "scan_dataset": "scan",
    "scan_split": "scan",
    "inspect_image": "scan",
    "Source": "sources",
    "open_source": "sources",
    "holdout_split": "splits",
    "holdout_indices": "splits",
    "balanced_subset": "splits",
    "DemoSpec": "demo",
    "demo_dataset": "demo",
    "write_demo_dataset": "demo",
})
