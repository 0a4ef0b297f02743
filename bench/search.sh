#!/usr/bin/env bash
# The schedule search on the embedded demo set (the demo recipe: resnet10t at R = 64, E = 12),
# then its schedule, the ET++ preset at the same budget and the 18-epoch baseline, each trained
# with the same trainer and recipe, once per seed (default seeds 0 1 2: one run's top-1 on the
# 250 validation images moves by a point or more from seed to seed). What to look for: the
# search ends within 15 minutes on 2 idle cores, and the searched schedule's mean top-1 is not
# below the ET++ preset's nor more than 1 point below the baseline's (both checks are in the
# JSON, with every run).
# Usage: bench/search.sh [OUTDIR] [SEEDS] [SEARCH FLAGS] [TAG]
#   bench/search.sh bench/results "0 1 2"                                   (E = 12, the recipe's)
#   bench/search.sh bench/results "0 1 2" "--wall-clock-budget 45" wallclock-demo
set -euo pipefail
out=${1:-bench/results}
seeds=${2:-0 1 2}
flags=${3:-}
tag=${4:-demo}
stamp=$(date +%Y%m%d)
name="$out/search-$tag-cpu-$stamp"
work=$(mktemp -d)
t0=$(date +%s.%N)
# shellcheck disable=SC2086  # the flags are words
etpp search --recipe demo $flags --output "$work/search"
t1=$(date +%s.%N)
for seed in $seeds; do
    etpp train --recipe demo --preset "$work/search/schedule.yaml" --seed "$seed" --output "$work/searched-$seed" --no-progress
    etpp train --recipe demo --seed "$seed" --output "$work/etpp-$seed" --no-progress
    etpp train --recipe demo --baseline --seed "$seed" --output "$work/baseline-$seed" --no-progress
done
cp "$work/search/search.png" "$name.png"
cp "$work/search/schedule.yaml" "$name-schedule.yaml"
python - "$work" "$name" "$t0" "$t1" "$seeds" <<'PY'
import json
import sys
from pathlib import Path

from etpp_dali.bench.record import markdown_table, write_results
from etpp_dali.util.files import write_text_atomic
from etpp_dali.search import trials_table

work, name, t0, t1 = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
seeds = sys.argv[5].split()
search = json.loads((work / "search" / "search.json").read_text())
runs, mean = [], {}
for run in ("searched", "etpp", "baseline"):
    top1s = []
    for seed in seeds:
        s = json.loads((work / f"{run}-{seed}" / "summary.json").read_text())
        top1s.append(s["top1"])
        runs.append({"run": run, "seed": int(seed), "schedule": s["schedule"], "epochs": s["epochs_done"],
                     "wall_s": s["wall_s"], "top1": s["top1"], "relative_compute": s["relative_compute"]})
    mean[run] = sum(top1s) / len(top1s)
doc = {"benchmark": "search", "search_wall_s": round(t1 - t0, 1), "bands": search["bands"],
       "proxy_top1": search["top1"], "proxy_reference_top1": search["reference_top1"],
       "proxy_runs": sum(1 for t in search["trials"] if t["status"] == "run") * search["plan"]["seeds"],
       "trials": search["trials"], "runs": runs, "seeds": [int(s) for s in seeds],
       "mean_top1": {k: round(v, 2) for k, v in mean.items()},
       "searched_not_below_etpp": mean["searched"] >= mean["etpp"],
       "searched_within_1_point_of_baseline": mean["searched"] >= mean["baseline"] - 1.0}
write_results(doc, f"{name}.json")
table = markdown_table([{**r, "top1": f"{r['top1']:.1f}"} for r in runs],
                       ["run", "seed", "schedule", "epochs", "wall_s", "top1", "relative_compute"])
means = ", ".join(f"{k} {v:.2f}" for k, v in mean.items())
text = (f"search ({name}.json): {doc['search_wall_s']:.0f} s, {doc['proxy_runs']} proxy runs, bands "
        f"{', '.join(map(str, doc['bands']))}\n\n{trials_table(search['trials'])}\n\n{table}\n\n"
        f"mean top-1 over seeds {', '.join(seeds)}: {means}\n"
        f"searched not below ET++: {doc['searched_not_below_etpp']}; within 1 point of the baseline: "
        f"{doc['searched_within_1_point_of_baseline']}\n")
write_text_atomic(f"{name}.md", text)
print(text)
PY
