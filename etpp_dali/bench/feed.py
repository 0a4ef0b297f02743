"""The training feed alone: how many images a second the Python side hands DALI, per rank.

The feed makes each batch's inputs: the encoded files (their bytes, or, where the graph reads
the files itself, their paths) and the draws (crop windows, flips, RandAugment). This measures
it without decoding, one rank of ``--ranks`` (its share of the data set), batch ``--batch``, in
an epoch of the schedule's last stage (the RandAugment magnitude at its highest: the most
draws). Variants, each in a fresh process of its own (no other variant's threads alive):

- ``per-file``: the feed before this change: ``np.fromfile`` per file, then the draws, on one
  thread;
- ``bytes-T``: :class:`etpp_dali.loader.plans.Feed` reading the bytes (as it does for tar
  shards) into recycled buffers, on ``T`` worker threads (0: the caller's thread);
- ``paths-T``: the feed as the loaders run it on files: paths and draws, the graph reads;
- ``dali-read-T``: ``paths-T`` with DALI reading the files (``fn.io.file.read`` on the usable
  cores, the loader's graph up to its decoder): the feed and the reads together, what the
  decoder is handed;
- ``reads``: the feed's batch reads alone on one thread; ``draws``: the draws alone.

A variant warms up (lookahead filled, buffers allocated) and is then timed over ``--windows``
windows of ``--batches`` batches; its rate is the median window. The rounds alternate the
variants' order (forward, then backward), and the report keeps each variant's median and
min-max over rounds. Every feed variant hashes the first batches it hands out (the draws, and
the bytes or paths): the hashes must agree within each kind, or the report says so. Bound: a
read costs one core at least, so ``dali-read`` above the usable cores times ``reads`` (one
thread) is a measurement error, flagged as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from nvidia.dali import fn, pipeline_def

from etpp_dali.bench.record import machine_info, markdown_table, write_results
from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.data.reads import BufferPool
from etpp_dali.data.sources import open_source
from etpp_dali.loader.feeds import PipelineConfig, TrainBatch, make_train_batch
from etpp_dali.loader.graphs import named_external_source
from etpp_dali.loader.plans import EpochSteps, Feed, TrainPlan
from etpp_dali.util.threads import usable_cores

__all__ = ["main", "measure", "report", "run_all"]

_MODULE = "etpp_dali.bench.feed"
_HASHED = 8  # batches whose bytes and draws every variant hashes
_WARMUP = 30


def _plan(data: str, batch: int, ranks: int, resolution: int) -> tuple[TrainPlan, int]:
    source = open_source(data, "train")
    curriculum = Curriculum.preset("etpp", family="resnet", budget=300, resolution=resolution)
    cfg = PipelineConfig(resolution=resolution, batch_size=batch)
    plan = TrainPlan(source, EpochSteps.of_shard(curriculum, batch, source, ranks), cfg, seed=0, shard_id=0,
                     num_shards=ranks, tensor_replay=False)
    return plan, curriculum.stages[-1].start_epoch


def _digest(h: Any, values: tuple) -> None:
    for v in values:
        if hasattr(v, "at"):  # a DALI batch
            v = [v.at(i) for i in range(len(v))]
        for part in (v if isinstance(v, list) else [v]):
            h.update(np.ascontiguousarray(part).tobytes())


def _per_file(plan: TrainPlan, epoch: int) -> Callable[[], tuple]:
    """The feed before this change: a read per file, then the draws, on the caller's thread."""
    stage, order, step = plan.curriculum.stage_at(epoch), plan.epoch_order(epoch), iter(range(10**9))

    def make() -> tuple:
        s = next(step)
        idx = plan.batch_indices((epoch, s), order)
        rng = np.random.default_rng([plan.seed, epoch, s, plan.shard_id])
        batch = make_train_batch([plan.source.read(int(i)) for i in idx], plan.source.labels[idx],
                                 plan.source.sizes[idx], band=stage.band, magnitude=stage.magnitude, epoch=epoch,
                                 step=s, rng=rng, cfg=plan.cfg)
        return batch.as_feed(plan.cfg.randaugment)
    return make


def _parts(plan: TrainPlan, epoch: int, part: str) -> Callable[[], tuple]:
    """The reads alone (recycled buffers, as the feed reads) or the draws alone."""
    stage, order, step = plan.curriculum.stage_at(epoch), plan.epoch_order(epoch), iter(range(10**9))
    pool = BufferPool()
    held: list[np.ndarray] = []

    def make() -> tuple:
        s = next(step)
        idx = plan.batch_indices((epoch, s), order)
        if part == "reads":
            views, buffer = plan.source.read_batch(idx, pool)
            held.append(buffer)
            if len(held) > 3:
                pool.give(held.pop(0))
            return (views,)
        rng = np.random.default_rng([plan.seed, epoch, s, plan.shard_id])
        batch = make_train_batch([None] * len(idx), plan.source.labels[idx], plan.source.sizes[idx],
                                 band=stage.band, magnitude=stage.magnitude, epoch=epoch, step=s, rng=rng,
                                 cfg=plan.cfg)
        return batch.as_feed(plan.cfg.randaugment)[1:]
    return make


class _DaliRead:
    """The feed and DALI's reads: a pipeline of the external source and ``fn.io.file.read``."""

    def __init__(self, plan: TrainPlan, epoch: int, threads: int) -> None:
        self.feed = Feed(plan, (epoch, 0), threads)

        def graph() -> tuple:
            fed = named_external_source(self.feed, TrainBatch.feed_names(plan.cfg.randaugment))
            return fn.io.file.read(fed["encoded"], dont_use_mmap=True), fed["labels"]

        self.pipe = pipeline_def(graph, batch_size=plan.cfg.batch_size, num_threads=usable_cores(), device_id=None,
                                 prefetch_queue_depth=2)()
        self.pipe.build()

    def __call__(self) -> tuple:
        encoded, _ = self.pipe.run()
        return (encoded,)  # DALI's batch as it is: copied out only to be hashed

    def close(self) -> None:
        self.feed.close()


def _variant(plan: TrainPlan, epoch: int, variant: str) -> Callable[[], tuple]:
    if variant == "per-file":
        return _per_file(plan, epoch)
    if variant in ("reads", "draws"):
        return _parts(plan, epoch, variant)
    kind, _, threads = variant.rpartition("-")
    if kind in ("bytes", "paths", "dali-read") and threads.isdigit():
        plan.cfg = dataclasses.replace(plan.cfg, read_files=kind != "bytes")
        return _DaliRead(plan, epoch, int(threads)) if kind == "dali-read" else Feed(plan, (epoch, 0), int(threads))
    raise SystemExit(f"variant {variant!r} is unknown; use per-file, reads, draws, bytes-T, paths-T or dali-read-T")


def measure(data: str, variant: str, *, batch: int, ranks: int, resolution: int, windows: int,
            batches: int) -> dict[str, Any]:
    """One variant in this process: its window rates, CPU seconds and the digest of its first batches."""
    plan, epoch = _plan(data, batch, ranks, resolution)
    needed = _WARMUP + windows * batches
    if needed > plan.batches_in_epoch(epoch):
        raise SystemExit(f"--batches {batches} x --windows {windows}: more than the {plan.batches_in_epoch(epoch)} "
                         "batches of an epoch of this rank; lower them or use a larger data set")
    make = _variant(plan, epoch, variant)
    h = hashlib.sha256()
    for k in range(_WARMUP):
        values = make()
        if k < _HASHED and variant != "draws":
            _digest(h, values)
    rates = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(batches):
            make()
        rates.append(batches * batch / (time.perf_counter() - t0))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if hasattr(make, "close"):
        make.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"variant": variant, "kind": _kind(variant), "rate": float(np.median(rates)),
            "window_rates": [round(r) for r in rates],
            "cpu_us_per_image": round(cpu / (windows * batches * batch) * 1e6, 2),
            "digest": h.hexdigest()[:16] if variant != "draws" else None, "images": len(plan.source)}


def _kind(variant: str) -> str:
    """What a variant's digest covers: the draws with the bytes, with the paths, or the bytes alone."""
    if variant.startswith("paths-"):
        return "paths and draws"
    if variant in ("reads",) or variant.startswith("dali-read-"):
        return "bytes"
    return "bytes and draws"


def run_all(data: str, variants: list[str], *, rounds: int, **kw: Any) -> list[dict[str, Any]]:
    """Every variant alone in a fresh process, ``rounds`` times, the order reversed every other round."""
    rows = []
    for r in range(rounds):
        for variant in (variants if r % 2 == 0 else variants[::-1]):
            args = [sys.executable, "-m", _MODULE, "one", "--data", data, "--variant", variant] + \
                [f"--{k}={v}" for k, v in kw.items()]
            done = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if done.returncode:
                raise SystemExit(f"{variant}: {done.stderr.strip().splitlines()[-1]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row.update(round=r, load1=os.getloadavg()[0])
            rows.append(row)
            print(f"round {r} {variant}: {row['rate']:.0f} img/s ({row['cpu_us_per_image']} CPU-us/image, "
                  f"load {row['load1']:.2f})", file=sys.stderr)
    return rows


def report(rows: list[dict[str, Any]], cores: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Per variant: median and min-max over rounds; and the checks (same batches, the bound)."""
    summary, checks = [], []
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["variant"], []).append(row)
    for variant, runs in by.items():
        rates = [r["rate"] for r in runs]
        summary.append({"variant": variant, "median": round(float(np.median(rates))), "min": round(min(rates)),
                        "max": round(max(rates)), "cpu_us_per_image": float(np.median([r["cpu_us_per_image"]
                                                                                       for r in runs]))})
    for kind in sorted({r["kind"] for r in rows if r["digest"]}):
        digests = {r["digest"] for r in rows if r["digest"] and r["kind"] == kind}
        same = "yes" if len(digests) == 1 else f"NO ({sorted(digests)})"
        checks.append(f"same {kind} in every variant that hands them out: {same}")
    reads = next((s["median"] for s in summary if s["variant"] == "reads"), None)
    if reads:
        bound = cores * reads
        for s in summary:
            if s["variant"].startswith("dali-read-") and s["max"] > bound:
                checks.append(f"{s['variant']}: {s['max']} img/s is above {cores} cores x the reads alone "
                              f"({bound}): a measurement error")
        checks.append(f"bound for reading files: {cores} usable cores x the reads alone on one thread = {bound} img/s")
    return summary, checks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["run", "one"])
    parser.add_argument("--data", required=True, help="an ImageFolder root (its train/ split is used)")
    parser.add_argument("--variant", default="paths-0")
    parser.add_argument("--variants", default="per-file,reads,draws,bytes-0,bytes-1,bytes-2,paths-0,paths-1,"
                                               "dali-read-0,dali-read-1")
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", default=None)
    a = parser.parse_args(argv)
    kw = dict(batch=a.batch, ranks=a.ranks, resolution=a.resolution, windows=a.windows, batches=a.batches)
    if a.what == "one":
        print(json.dumps(measure(a.data, a.variant, **kw)))
        return
    if not Path(a.data).is_dir():
        raise SystemExit(f"--data {a.data}: no such folder; give an ImageFolder root (bench/scale.sh builds one)")
    rows = run_all(a.data, a.variants.split(","), rounds=a.rounds, **kw)
    summary, checks = report(rows, usable_cores())
    doc = {"benchmark": "feed", "data": a.data, "images": rows[0]["images"], "settings": kw, "rounds": a.rounds,
           "summary": summary, "checks": checks, "rows": rows, "machine": machine_info()}
    write_results(doc, a.json)
    print(markdown_table(summary, ["variant", "median", "min", "max", "cpu_us_per_image"]))
    print("\n".join(checks))


if __name__ == "__main__":
    main()
