#!/usr/bin/env bash
# No slowdown between two revisions: the loader benchmark (our loader and decode alone, on the
# photos) and `etpp train` on the embedded demo, each revision checked out in a worktree of its
# own with its own cache folder, each run alone, in A B B A order over two rounds, so a drift in
# the machine's load shows up as a spread, not as a difference between the revisions.
# Usage: bench/revisions.sh OLD_REV [NEW_REV=HEAD] [OUTDIR=bench/results] [PHOTOS]
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(git rev-parse --short "$1"); new=$(git rev-parse --short "${2:-HEAD}")
out=${3:-bench/results}
photos=$(realpath "${4:-../shared/data/hymenoptera}")
stamp=$(date +%Y%m%d)
. bench/worktrees.sh  # $work: a worktree of each revision
mkdir -p "$out"
one() {  # REV ROUND: the loader benchmark, then a demo training, of one revision
    (cd "$work/$1" && export PYTHONPATH=$PWD ETPP_CACHE="$work/cache-$1" &&
     python -m etpp_dali bench loader --data "$photos" --loaders ours,decode --bands 96,224 --magnitude 9 \
         --batch-size 64 --threads 2 --rounds 1 --min-batches 10 --min-seconds 3 --json "$work/loader-$1-$2.json" >/dev/null &&
     python -m etpp_dali train --seed 0 --no-progress --output "$work/train-$1-$2" >/dev/null)
}
one "$old" 1; one "$new" 1; one "$new" 2; one "$old" 2
python - "$work" "$old" "$new" "$out/revisions-$old-$new-cpu-$stamp" <<'PY'
import json
import sys
from pathlib import Path

from etpp_dali.bench.record import machine_info, markdown_table, write_results

work, old, new, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
rows = []
for rev in (old, new):
    for rnd in (1, 2):
        doc = json.loads((work / f"loader-{rev}-{rnd}.json").read_text())
        for loader, per_band in doc["results"].items():
            for band, stats in per_band.items():
                rows.append({"revision": rev, "round": rnd, "what": f"loader {loader} B={band}",
                             "value": stats["median"], "unit": "img/s"})
        s = json.loads((work / f"train-{rev}-{rnd}" / "summary.json").read_text())
        rows.append({"revision": rev, "round": rnd, "what": "etpp train (demo) wall-clock", "value": round(s["wall_s"], 1),
                     "unit": "s"})
        rows.append({"revision": rev, "round": rnd, "what": "etpp train (demo) top-1", "value": s["top1"], "unit": "%"})
table = []
for what in dict.fromkeys(r["what"] for r in rows):
    vals = {rev: [r["value"] for r in rows if r["what"] == what and r["revision"] == rev] for rev in (old, new)}
    mid = {rev: sum(v) / len(v) for rev, v in vals.items()}
    table.append({"what": what, "unit": next(r["unit"] for r in rows if r["what"] == what),
                  old: "/".join(f"{v:g}" for v in vals[old]), new: "/".join(f"{v:g}" for v in vals[new]),
                  "new/old": round(mid[new] / mid[old], 3) if mid[old] else None})
doc = {"benchmark": "revisions", "old": old, "new": new, "order": f"{old} {new} {new} {old}", "rows": rows,
       "table": table, "machine": machine_info()}
write_results(doc, f"{name}.json")
md = markdown_table(table, ["what", "unit", old, new, "new/old"])
Path(f"{name}.md").write_text(f"Two revisions side by side (bench/revisions.sh; rounds in order {doc['order']}, "
                              f"values per round)\n\n{md}\n")
print(md)
PY
