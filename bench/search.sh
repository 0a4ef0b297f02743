#!/usr/bin/env bash
# The schedule search, then its schedule, the ET++ preset at the same budget and (by default) the
# 18-epoch baseline, each trained with the same trainer and recipe, once per seed. What to look
# for: the search's wall-clock against one training run of the same budget on this machine (both
# measured here, the machine's load average beside each), its proxy cost as printed, and the
# searched schedule's mean top-1 against the ET++ preset's (all in the JSON, with every run).
# Usage: bench/search.sh [OUTDIR] [SEEDS] [SEARCH FLAGS] [TAG] [COMMON FLAGS] [TRAIN FLAGS] [RUNS]
#   SEARCH FLAGS go to etpp search only, COMMON FLAGS to etpp search and every etpp train, TRAIN
#   FLAGS to every etpp train; RUNS is the trainings to make (default: searched etpp baseline).
#   WORK=DIR keeps the runs there: a search or a run that finished there before is not run again.
#   bench/search.sh bench/results "0 1 2"                                   (the demo recipe, E = 12)
#   bench/search.sh bench/results "0 1 2" "--wall-clock-budget 45" wallclock-demo
#   bench/search.sh bench/results "0 1" "--proxy-seeds 1" flowers \
#       "--data /tmp/flowers48 --resolution 48 --budget 10" "--echo off" "searched etpp"
set -euo pipefail
out=${1:-bench/results}
seeds=${2:-0 1 2}
flags=${3:-}
tag=${4:-demo}
common=${5:-}
train_flags=${6:-}
runs=${7:-searched etpp baseline}
stamp=$(date +%Y%m%d)
name="$out/search-$tag-cpu-$stamp"
work=${WORK:-$(mktemp -d)}
mkdir -p "$work" "$out"
loads="$work/loads.jsonl"
note() {  # step, event: the time and the 1-minute load average, one JSON line
    echo "{\"step\": \"$1\", \"event\": \"$2\", \"t\": $(date +%s.%N), \"load1\": $(cut -d' ' -f1 /proc/loadavg)}" >> "$loads"
}
if [ ! -f "$work/search-times" ]; then
    note search start
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086  # the flags are words
    etpp search --recipe demo $common $flags --output "$work/search" 2>&1 | tee "$work/search.log"
    t1=$(date +%s.%N)
    note search end
    echo "$t0 $t1" > "$work/search-times"
fi
read -r t0 t1 < "$work/search-times"
for seed in $seeds; do
    for run in $runs; do
        [ -f "$work/$run-$seed/summary.json" ] && continue
        # shellcheck disable=SC2206  # the flags are words
        flags_here=($common $train_flags)
        case $run in
            searched)  # the schedule file holds its budget (its data epochs): a --budget would replace it
                kept=()
                for ((i = 0; i < ${#flags_here[@]}; i++)); do
                    if [ "${flags_here[i]}" = "--budget" ]; then i=$((i + 1)); else kept+=("${flags_here[i]}"); fi
                done
                flags_here=("${kept[@]}" --preset "$work/search/schedule.yaml") ;;
            etpp) ;;
            baseline) flags_here+=(--baseline) ;;
        esac
        note "$run-$seed" start
        etpp train --recipe demo "${flags_here[@]}" --seed "$seed" --output "$work/$run-$seed" --no-progress
        note "$run-$seed" end
    done
done
cp "$work/search/search.png" "$name.png"
cp "$work/search/schedule.yaml" "$name-schedule.yaml"
cp "$work/search/trials.md" "$name-trials.md"
python - "$work" "$name" "$t0" "$t1" "$seeds" "$runs" <<'PY'
import json
import sys
from pathlib import Path

from etpp_dali.bench.record import markdown_table, write_results
from etpp_dali.util.files import write_text_atomic

work, name, t0, t1 = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
seeds, kinds = sys.argv[5].split(), sys.argv[6].split()
search = json.loads((work / "search" / "search.json").read_text())
loads = [json.loads(line) for line in (work / "loads.jsonl").read_text().splitlines()]
load_of = {(r["step"], r["event"]): r["load1"] for r in loads}
times = {(r["step"], r["event"]): r["t"] for r in loads}
runs, mean, walls = [], {}, {}
for run in kinds:
    top1s = []
    for seed in seeds:
        s = json.loads((work / f"{run}-{seed}" / "summary.json").read_text())
        top1s.append(s["top1"])
        start, end = (times.get((f"{run}-{seed}", e)) for e in ("start", "end"))
        wall = round(end - start, 1) if start and end else None  # the whole etpp train process
        walls.setdefault(run, []).append(wall)
        runs.append({"run": run, "seed": int(seed), "schedule": s["schedule"], "epochs": s["epochs_done"],
                     "process_wall_s": wall, "train_wall_s": s["wall_s"], "top1": s["top1"], "relative_compute": s["relative_compute"],
                     "load1_start": load_of.get((f"{run}-{seed}", "start")),
                     "load1_end": load_of.get((f"{run}-{seed}", "end"))})
    mean[run] = sum(top1s) / len(top1s)
search_wall = round(t1 - t0, 1)
one_run = {k: sum(w) / len(w) for k, v in walls.items() if (w := [x for x in v if x])}
spent = search["plan"]["spent"]
doc = {"benchmark": "search", "search_wall_s": search_wall, "bands": search["bands"],
       "search_load1": [load_of.get(("search", "start")), load_of.get(("search", "end"))],
       "proxy_top1": search["top1"], "proxy_scored_at": search.get("scored_at"),
       "proxy_reference_top1": search["reference_top1"], "settings": search["settings"],
       "printed_max_training_runs": search["plan"]["max_training_runs"],
       "proxy_training_runs": spent["training_runs"],
       "search_wall_over_one_training": {k: round(search_wall / v, 3) for k, v in one_run.items()},
       "trials": search["trials"], "runs": runs, "seeds": [int(s) for s in seeds],
       "mean_top1": {k: round(v, 2) for k, v in mean.items()}}
if "etpp" in mean and "searched" in mean:
    doc["searched_not_below_etpp"] = mean["searched"] >= mean["etpp"]
if "baseline" in mean and "searched" in mean:
    doc["searched_within_1_point_of_baseline"] = mean["searched"] >= mean["baseline"] - 1.0
write_results(doc, f"{name}.json")
table = markdown_table([{**r, "top1": f"{r['top1']:.1f}"} for r in runs],
                       ["run", "seed", "schedule", "epochs", "process_wall_s", "train_wall_s", "top1", "relative_compute", "load1_start",
                        "load1_end"])
means = ", ".join(f"{k} {v:.2f}" for k, v in mean.items())
ratios = ", ".join(f"{v:.2f} x one {k} training" for k, v in doc["search_wall_over_one_training"].items())
checks = "; ".join(f"{k}: {doc[k]}" for k in ("searched_not_below_etpp", "searched_within_1_point_of_baseline")
                   if k in doc)
text = (f"search ({name}.json): {search_wall:.0f} s ({ratios}; 1-min load {doc['search_load1'][0]} at the start, "
        f"{doc['search_load1'][1]} at the end), proxy training {spent['training_runs']:.3g} x one training run "
        f"(printed bound {doc['printed_max_training_runs']:.3g}), bands {', '.join(map(str, doc['bands']))}\n\n"
        f"trials: {Path(name).name}-trials.md\n\n{table}\n\nmean top-1 over seeds {', '.join(seeds)}: {means}\n"
        f"{checks}\n")
write_text_atomic(f"{name}.md", text)
print(text)
PY
