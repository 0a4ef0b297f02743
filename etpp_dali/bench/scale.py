"""The scale benchmark: opening ImageFolders of N images (hard links to real JPEGs), one rank and eight.

For each N it builds (once) a tree of N hard links to the photos in ``--photos`` (1,000 class
folders, ImageNet-like names) and measures, each case in a fresh process:

- ``first``: the first scan with full validation (header and end marker of every file) into an
  empty cache: seconds and files/sec; ``trust``: the same reading headers only (``--trust-data``);
- ``cached``: opening it again (the index mapped): seconds, and the private memory it added;
- ``rescan``: opening it after a few files were added to one class folder and removed from
  another (only those folders are listed again);
- ``verify``: opening it with every file statted (what ``etpp check-data`` does on a cached set);
- ``loader``: a ``CurriculumLoader`` over the cached index to its first batch (tiny batch, CPU);
- ``ranks``: ``torchrun`` with 8 CPU ranks (gloo) opening it at once, first without an index
  (one rank reads the files, the others wait) and then cached; each rank to its first batch.

Memory comes from ``/proc/self/smaps_rollup`` (RSS, PSS, private and shared pages) and the bytes
each process read from ``/proc/self/io`` (``rchar``: reads through system calls, which mapping an
index does not make). The load average is recorded beside every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from etpp_dali.bench.record import machine_info, markdown_table
from etpp_dali.curriculum.schedule import Curriculum, StageSpec
from etpp_dali.data.scan import scan_split
from etpp_dali.data.sources import open_source
from etpp_dali.loader.loaders import CurriculumLoader

__all__ = ["build_tree", "extrapolate", "main", "measure", "memory", "report", "run_all", "run_ranks", "walk_and_stat"]

CLASSES = 1000
CASES = ("first", "trust", "cached", "walk", "verify", "loader", "rescan")
RANKS = 8
_MODULE = "etpp_dali.bench.scale"
_CHANGED = 5  # files added to one class folder and removed from another before the rescan


def build_tree(root: Path, n: int, photos: Path, classes: int = CLASSES) -> Path:
    """``root/train/<class>/<name>.JPEG``: ``n`` hard links to the JPEGs in ``photos`` (which must be
    on the same file system), made once (a marker file records ``n``)."""
    marker = root / f".built-{n}"
    if marker.exists():
        return root
    sources = sorted(str(p) for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    for c in range(classes):
        folder = root / "train" / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(c, n, classes):
            target = folder / f"n{c:08d}_{j}.JPEG"
            if not target.exists():
                os.link(sources[j % len(sources)], target)
    marker.touch()
    return root


def memory() -> dict[str, int]:
    """This process's memory in bytes from smaps_rollup: rss, pss, ``anon`` (anonymous pages: its
    own, which no other process can share), ``private_file`` (file pages only it maps: page cache
    that another process mapping the same file would share), shared; the bytes and read calls it
    made so far (``rchar``, ``syscr``), its peak RSS, and the CPU seconds of it and its children."""
    out: dict[str, int] = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0]) * 1024
    with open("/proc/self/io") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    cpu = sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                          resource.RUSAGE_CHILDREN)))
    return {"rss": out["Rss"], "pss": out["Pss"], "anon": out["Anonymous"],
            "private_file": out["Private_Clean"] + out["Private_Dirty"] - out["Anonymous"],
            "shared": out["Shared_Clean"] + out["Shared_Dirty"], "rchar": int(io["rchar"]), "syscr": int(io["syscr"]),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_s": round(cpu, 3)}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {f"{k}_delta": after[k] - before[k] for k in ("anon", "private_file", "rss", "pss", "rchar", "syscr")}
    out["cpu_s_delta"] = round(after["cpu_s"] - before["cpu_s"], 3)
    return out


def _curriculum() -> Curriculum:
    return Curriculum([StageSpec(32, 0.0, 1.0)], budget=1, resolution=64, split="epochs")


def _open_case(data: Path, case: str) -> tuple[int, int, int, Any]:
    """(good images, bad files, index file bytes, source or None) of opening ``data`` as ``case`` does."""
    if case == "verify":
        scan = scan_split(data / "train", verify_files=True)
        return len(scan), len(scan.bad), scan.index.path.stat().st_size, None
    if case == "walk":
        return walk_and_stat(data / "train"), 0, 0, None
    source = open_source(data, trust=case == "trust")
    return len(source), len(source.bad), source.index.path.stat().st_size, source


def measure(data: Path, case: str) -> dict[str, Any]:
    """One case (see the module docstring) in this process; the cache is the caller's."""
    before, load = memory(), os.getloadavg()[0]
    start = time.perf_counter()
    images, bad, index_bytes, source = _open_case(data, case)
    opened = time.perf_counter() - start
    opened_memory = memory()
    row = {"case": case, "images": images, "bad": bad, "open_s": round(opened, 3), "index_bytes": index_bytes,
           "files_per_s": round((images + bad) / max(opened, 1e-9)), "load_before": round(load, 2),
           **opened_memory, **_delta(before, opened_memory)}
    if case == "loader":
        loader = CurriculumLoader(source, _curriculum(), 2, device="cpu", num_threads=1, verbose=False)
        next(iter(loader))
        row["first_batch_s"] = round(time.perf_counter() - start, 3)
        row.update({f"{k}_after_batch": v for k, v in memory().items() if k in ("rss", "pss", "anon", "shared")})
    row["load_after"] = round(os.getloadavg()[0], 2)
    return row


def walk_and_stat(root: Path) -> int:
    """List every class folder and stat every file (what deciding a rescan file by file costs)."""
    count = 0
    for folder in sorted(os.scandir(root), key=lambda e: e.name):
        for entry in os.scandir(folder.path):
            os.stat(entry.path)
            count += 1
    return count


def run_ranks(data: Path) -> list[dict[str, Any]] | None:
    """Under ``torchrun``: every rank opens ``data`` and takes its loader's first batch; rank 0
    gets every rank's row (the others ``None``)."""
    dist.init_process_group("gloo")
    dist.barrier()
    row = measure(data, "loader")
    row["rank"] = dist.get_rank()
    rows: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(rows, row)
    dist.destroy_process_group()
    return rows if row["rank"] == 0 else None


def _child(command: list[str], cache: Path, timeout: float = 3600) -> tuple[list[dict[str, Any]], float]:
    """Run a measuring process with ``cache`` as its cache; its rows and its wall-clock seconds."""
    env = dict(os.environ, ETPP_CACHE=str(cache), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("SCALE ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][6:]), wall


def _case(data: Path, case: str, cache: Path, n: int) -> dict[str, Any]:
    rows, wall = _child([sys.executable, "-m", _MODULE, "case", "--data", str(data), "--case", case], cache)
    print(f"N = {n}: {case}: {rows[0]['open_s']} s", file=sys.stderr, flush=True)
    return {"n": n, "process_s": round(wall, 2), **rows[0]}


def _ranks(data: Path, cache: Path, n: int, state: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}",
               "-m", _MODULE, "ranks", "--data", str(data)]
    rows, wall = _child(command, cache)
    print(f"N = {n}: {RANKS} ranks, {state}: {max(r['open_s'] for r in rows)} s", file=sys.stderr, flush=True)
    readers = [r["rank"] for r in rows if r["rchar_delta"] > 64 * n]  # more than 64 bytes an image read
    return {"n": n, "state": state, "ranks": len(rows), "process_s": round(wall, 2), "ranks_that_read": readers,
            "open_s_max": max(r["open_s"] for r in rows), "first_batch_s_max": max(r["first_batch_s"] for r in rows),
            "anon_delta_max": max(r["anon_delta"] for r in rows), "pss_mean": sum(r["pss"] for r in rows) / len(rows),
            "pss_delta_mean": sum(r["pss_delta"] for r in rows) / len(rows),
            "load_before": rows[0]["load_before"], "per_rank": rows}


def _rescan(data: Path, cache: Path, n: int) -> dict[str, Any]:
    """Add a few links to one class folder and remove a few from another, open, then undo it."""
    first, second = sorted((data / "train").iterdir())[:2]
    added = [first / f"added-{k}.JPEG" for k in range(_CHANGED)]
    removed = sorted(second.iterdir())[:_CHANGED]
    for path in added:
        os.link(removed[0], path)
    for path in removed:
        os.rename(path, data / path.name)
    time.sleep(1.0)  # changes a second old: the scan need not wait for their timestamps to settle
    try:
        return _case(data, "rescan", cache, n)
    finally:
        for path in added:
            path.unlink()
        for path in removed:
            os.rename(data / path.name, path)


def run_all(sizes: list[int], work: Path, photos: Path, ranks: bool = True) -> dict[str, Any]:
    """Every case at every size (trees and caches under ``work``)."""
    doc: dict[str, Any] = {"benchmark": "scale", "machine": machine_info(), "rows": [], "ranks": []}
    for n in sizes:
        start = time.perf_counter()
        data = build_tree(work / f"n{n}", n, photos)
        doc.setdefault("tree_s", {})[n] = round(time.perf_counter() - start, 1)
        cache, trusted, shared = work / f"cache-{n}", work / f"cache-{n}-trust", work / f"cache-{n}-ranks"
        for folder in (cache, trusted, shared):
            shutil.rmtree(folder, ignore_errors=True)
        for case in CASES[:-1]:
            doc["rows"].append(_case(data, case, trusted if case == "trust" else cache, n))
        if ranks:
            doc["ranks"] += [_ranks(data, shared, n, "first"), _ranks(data, shared, n, "cached")]
        doc["rows"].append(_rescan(data, cache, n))
    return doc


def report(doc: dict[str, Any]) -> str:
    """The Markdown of a :func:`run_all` record: a table of the cases, one of the ranks, and the
    figures at ImageNet-22K size extrapolated linearly from the measured sizes."""
    mb = 2**20
    rows = [dict(r, anon_delta_mb=r["anon_delta"] / mb, anon_per_image=r["anon_delta"] / r["n"],
                 pss_delta_mb=r["pss_delta"] / mb, rss_mb=r["rss"] / mb, read_mb=r["rchar_delta"] / mb,
                 files_per_cpu_s=round((r["images"] + r["bad"]) / max(r["cpu_s_delta"], 1e-3)),
                 index_per_image=r["index_bytes"] / r["n"]) for r in doc["rows"]]
    columns = ["n", "case", "open_s", "files_per_s", "cpu_s_delta", "files_per_cpu_s", "first_batch_s",
               "anon_delta_mb", "anon_per_image", "pss_delta_mb", "rss_mb", "read_mb", "index_per_image",
               "load_before", "load_after"]
    ranks = [dict(r, anon_delta_max_mb=r["anon_delta_max"] / mb, pss_mean_mb=r["pss_mean"] / mb,
                  pss_delta_mean_mb=r["pss_delta_mean"] / mb,
                  readers=",".join(map(str, r["ranks_that_read"])) or "none") for r in doc["ranks"]]
    rank_columns = ["n", "state", "ranks", "open_s_max", "first_batch_s_max", "readers", "anon_delta_max_mb",
                    "pss_delta_mean_mb", "pss_mean_mb", "load_before"]
    out = [markdown_table(rows, columns), ""]
    if ranks:
        out += [markdown_table(ranks, rank_columns), ""]
    return "\n".join(out + extrapolate(doc)) + "\n"


def extrapolate(doc: dict[str, Any], n: int = 14_200_000) -> list[str]:
    """Lines: the cached open, its anonymous memory per rank and the index file at ``n`` images,
    each a least-squares line through the measured sizes (the cached case)."""
    cached = [r for r in doc["rows"] if r["case"] == "cached"]
    if len(cached) < 2:
        return []
    sizes = np.array([r["n"] for r in cached], dtype=float)
    lines = [f"Extrapolated to {n:,} images (a line through N = {', '.join(f'{int(x):,}' for x in sizes)}):"]
    for key, what, scale, unit in (("open_s", "cached open", 1, "s"), ("anon_delta", "anonymous memory of the open",
                                   2**20, "MB"), ("index_bytes", "index file (shared through the page cache)", 2**20,
                                   "MB")):
        slope, intercept = np.polyfit(sizes, [r[key] / scale for r in cached], 1)
        lines.append(f"- {what}: {slope * n + intercept:,.1f} {unit}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m etpp_dali.bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "report", "tree", "case", "ranks"])
    parser.add_argument("--data", type=Path, default=None, help="The tree's root (train/ inside).")
    parser.add_argument("--sizes", default="10000,100000,1280000", help="run: the N to measure.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/etpp-scale"), help="run: trees and caches.")
    parser.add_argument("--json", type=Path, default=None, help="run: the record (and its .md beside).")
    parser.add_argument("--no-ranks", action="store_true", help="run: skip the 8-rank runs.")
    parser.add_argument("--n", type=int, default=0, help="tree: how many links.")
    parser.add_argument("--photos", type=Path, default=None, help="tree: the JPEGs to link to.")
    parser.add_argument("--case", choices=CASES, default="cached")
    args = parser.parse_args(argv)
    if args.command == "report":  # the tables again, from a record
        args.json.with_suffix(".md").write_text(report(json.loads(args.json.read_text())))
        return
    if args.command == "run":
        doc = run_all([int(n) for n in args.sizes.split(",")], args.work, args.photos, not args.no_ranks)
        table = report(doc)
        if args.json:
            args.json.write_text(json.dumps(doc, indent=1))
            args.json.with_suffix(".md").write_text(table)
        print(table)
        return
    if args.command == "tree":
        build_tree(args.data, args.n, args.photos)
        return
    rows = [measure(args.data, args.case)] if args.command == "case" else run_ranks(args.data)
    if rows is not None:
        print("SCALE " + json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
