"""The loader benchmark's record as Markdown tables and a PNG (images/sec with the range of the
rounds, and ours against each peer per band)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from etpp_dali.bench.loaders import BREAKDOWN, LOADERS, PEERS
from etpp_dali.util.plots import pyplot, save_figure

__all__ = ["echo_bound", "loader_tables", "plot_loader_bench"]


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    if len(entry["rounds"]) == 1:
        return f"{entry['median']:,.0f}"
    return f"{entry['median']:,.0f} ({entry['min']:,.0f}-{entry['max']:,.0f})"


# every loader but the breakdown's cuts of our graph (they have a table of their own)
_TABLE_LOADERS = tuple(n for n in LOADERS if n not in BREAKDOWN or n == "ours")


def _measured(doc: dict[str, Any], names: Any) -> list[str]:
    return [n for n in names if n in doc["results"]]


def _rates_table(doc: dict[str, Any]) -> list[str]:
    bands = doc["settings"]["bands"]
    out = ["| loader | " + " | ".join(f"B = {b}" for b in bands) + " | cores busy | memory (MiB) |",
           "|---|" + "---|" * (len(bands) + 2)]
    for name in _measured(doc, _TABLE_LOADERS):
        per_band = doc["results"][name]
        cells = [_cell(per_band.get(str(b)) or per_band.get("all")) for b in bands]
        cores = max(e["cores_busy"] for e in per_band.values())
        memory = max(w["peak_rss_mb"] + w["workers_rss_mb"] for w in doc["windows"]
                     if w["loader"] == name and not w["error"])
        out.append(f"| {LOADERS[name].label} | " + " | ".join(cells) + f" | {cores:.1f} | {memory:,.0f} |")
    return out


def _ratio_table(doc: dict[str, Any]) -> list[str]:
    bands = doc["settings"]["bands"]
    peers = [p for p in PEERS if any(p in doc["ratios"][str(b)] for b in bands)]
    if not peers:
        return []
    out = ["| ours (exact crop) / | " + " | ".join(f"B = {b}" for b in bands) + " |",
           "|---|" + "---|" * len(bands)]
    for peer in peers:
        cells = [f"{doc['ratios'][str(b)][peer]:.2f}x" if peer in doc["ratios"][str(b)] else "-" for b in bands]
        out.append(f"| {LOADERS[peer].label} | " + " | ".join(cells) + " |")
    return out


def _breakdown_table(doc: dict[str, Any]) -> list[str]:
    rows = doc.get("breakdown") or []
    if not rows:
        return []
    bands = doc["settings"]["bands"]
    by = {(r["stage"], r["band"]): r for r in rows}
    columns = " | ".join(f"B = {b}: ms/img (+added)" for b in bands)
    out = [f"| stage of our loader (each timed alone) | {columns} |", "|---|" + "---|" * len(bands)]
    for stage in BREAKDOWN:
        cells = [f"{by[stage, b]['ms_per_image']:.2f} ({by[stage, b]['ms_added']:+.2f})" if (stage, b) in by else "-"
                 for b in bands]
        label = "+ hand-off to torch (the whole loader)" if stage == "ours" else LOADERS[stage].label
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def echo_bound(ms_whole: float, ms_decode: float, r: int) -> float:
    """The most that decoding once and augmenting ``r`` times can speed a loader up when it
    spends ``ms_decode`` of ``ms_whole`` per image decoding: echo saves only the decode, so
    ``ms_whole / (ms_whole - ms_decode (1 - 1/r))``."""
    return ms_whole / (ms_whole - ms_decode * (1.0 - 1.0 / r))


def _echo_bound_lines(doc: dict[str, Any]) -> list[str]:
    """Per band, the echo speed-up the breakdown allows, next to the one measured."""
    by = {(r["stage"], r["band"]): r["ms_per_image"] for r in doc.get("breakdown") or []}
    out = []
    for b in doc["settings"]["bands"]:
        if ("ours", b) not in by or ("stage_decode", b) not in by:
            continue
        whole, decode = by["ours", b], by["stage_decode", b]
        bounds = ", ".join(f"r = {r}: {echo_bound(whole, decode, r):.2f}x" for r in (2, 4))
        line = (f"echo bound at B = {b}: decoding is {decode:.2f} of {whole:.2f} ms/img and echo saves only the "
                f"decode, so at most {bounds} (r = inf: {echo_bound(whole, decode, math.inf):.2f}x)")
        rates = {n: (doc["results"].get(n) or {}).get(str(b)) for n in ("ours_echo1", "ours_echo4")}
        if all(rates.values()):
            line += f"; measured r = 4: {rates['ours_echo4']['median'] / rates['ours_echo1']['median']:.2f}x"
        out.append(line)
    return out


def loader_tables(doc: dict[str, Any]) -> str:
    """Images/sec (median and range of the rounds), the ratios, the breakdown, the errors."""
    s = doc["settings"]
    parts = [f"images/sec, {s['threads']} threads or workers, batch {s['batch']}, m = {s['magnitude']:g}, "
             f"R = {s['resolution']}, device {s['device']}; {doc['images']} images, sample of {doc['sample_files']}; "
             f"each loader alone in its own process, {s['rounds']} round(s) in alternating order, warm-up = prefetch "
             f"depth + {s['warmup']} batches, windows >= {s['min_batches']} batches and >= {s['min_seconds']:g} s; "
             "median (min-max of the rounds); memory: the process's peak RSS plus its workers' RSS (pages they share "
             "counted in each)", "", *_rates_table(doc)]
    for extra in (_ratio_table(doc), _breakdown_table(doc), _echo_bound_lines(doc)):
        if extra:
            parts += ["", *extra]
    for e in doc["errors"]:
        where = e["loader"] + (f" at B = {e['band']}" if e["band"] else "")
        parts.append(f"\nFAILED: {where} (round {e['round'] + 1}): {e['error']}")
    iso = doc.get("isolation", {})
    if iso.get("violations"):
        parts.append(f"\nNOT ISOLATED ({len(iso['violations'])}): " + "; ".join(iso["violations"][:5]))
    elif iso.get("checked"):
        parts.append("\nisolation checked: no window overlapped another loader's process or workers")
    return "\n".join(parts)


def plot_loader_bench(doc: dict[str, Any], path: str | Path) -> Path:
    """Two panels: images/sec per band (bars, whiskers: min-max of the rounds) and ours divided
    by each peer per band."""
    plt = pyplot()
    bands = doc["settings"]["bands"]
    names = _measured(doc, _TABLE_LOADERS)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        per_band = doc["results"][name]
        entries = [per_band.get(str(b)) or per_band.get("all") for b in bands]
        xs = [g + i * width for g in range(len(bands))]
        med = [e["median"] if e else 0 for e in entries]
        err = [[(e["median"] - e["min"]) if e else 0 for e in entries],
               [(e["max"] - e["median"]) if e else 0 for e in entries]]
        top.bar(xs, med, width=width, yerr=err, capsize=2, label=LOADERS[name].label, color=_colour(name))
    _band_axis(top, bands, width, len(names), "images/sec")
    top.legend(fontsize=7, ncol=2)
    s = doc["settings"]
    top.set_title(f"loaders alone, {s['threads']} threads/workers, batch {s['batch']}, m = {s['magnitude']:g}, "
                  f"{s['device']}")
    peers = [p for p in PEERS if any(p in doc["ratios"][str(b)] for b in bands)]
    width = 0.8 / max(len(peers), 1)
    for i, peer in enumerate(peers):
        xs = [g + i * width for g in range(len(bands))]
        bars = bottom.bar(xs, [doc["ratios"][str(b)].get(peer, 0) for b in bands], width=width,
                          label=LOADERS[peer].label, color=_colour(peer))
        bottom.bar_label(bars, fmt="%.2f", fontsize=7)
    bottom.axhline(1.0, color="black", linewidth=0.8)
    _band_axis(bottom, bands, width, len(peers), "ours / peer")
    if peers:
        bottom.legend(fontsize=7, ncol=2)
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def _colour(name: str) -> str:
    """One colour per loader in both panels."""
    return f"C{list(LOADERS).index(name) % 10}"


def _band_axis(ax: Any, bands: list[int], width: float, count: int, ylabel: str) -> None:
    ax.set_xticks([g + width * (count - 1) / 2 for g in range(len(bands))])
    ax.set_xticklabels([f"B = {b}" for b in bands])
    ax.set_ylabel(ylabel)
