"""The bench wing: images/sec and time to accuracy, measured side by side.

The loader benchmark (each loader timed alone in its own process, rounds in alternating order:
:mod:`.loader`, :mod:`.window`, the loaders compared in :mod:`.loaders` and :mod:`.reference`, the
tables in :mod:`.report`), the training feed alone (:mod:`.feed`), the data sets of ImageNet size
(:mod:`.scale`), the crop benchmarks (:mod:`.crop`) and the shared record
(:mod:`.record`), time to accuracy against the baseline (:mod:`.train`), and MAE pre-training with
ET++ against plain MAE (:mod:`.mae`).
"""

from etpp_dali.util.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "bench_loader": "loader",
    "LoaderBenchSettings": "loader",
    "bench_train": "train",
    "bench_mae": "mae",
    "bench_op": "crop",
    "bench_crop_pipeline": "crop",
    "markdown_table": "record",
    "write_results": "record",
    "machine_info": "record",
})
