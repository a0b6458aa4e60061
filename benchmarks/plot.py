"""The benchmark results as a picture: per workload, each implementation's time relative to the
workload's reference (PyTorch for the layers and models), with the targets marked.

    python -m benchmarks.plot [benchmarks/results/latest.json] [-o benchmarks/results/latest.png]

The runner calls this after every run (when matplotlib is installed). The x axis is logarithmic,
so 2x slower and 2x faster are the same distance from the reference line at 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

COLORS = {"scratchlm-numba": "#1f77b4", "scratchlm-numpy": "#9ecae1", "scratchlm": "#1f77b4",
          "scratchlm-gemm": "#1f77b4"}
OTHER = "#bdbdbd"
CLIP = 16.0          # bars past 16x (NLTK's per-query scoring) are cut there, the value written out


def plot_results(json_path, png_path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(json_path).read_text())
    rows, workloads, meta = data["results"], data["workloads"], data["meta"]
    bars = []                                   # (workload label, impl, ratio, range, target)
    for name, w in workloads.items():
        own = [r for r in rows if r["workload"] == name and r["ratio"] is not None
               and r["impl"] != w["reference"]]
        for r in own:
            label = f"{w['label']} {name}" if w.get("label") else name
            bars.append((label, r["impl"], r["ratio"], r["ratio_range"], r["target"],
                         w["reference"]))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(bars) + 1.6))
    ys = list(range(len(bars)))[::-1]
    for y, (label, impl, ratio, rng, target, ref) in zip(ys, bars):
        color = COLORS.get(impl, OTHER if not impl.startswith("scratchlm") else COLORS["scratchlm"])
        shown = math.log2(min(ratio, CLIP))
        ax.barh(y, shown, left=0, color=color, height=0.7)
        if rng:
            ax.plot([math.log2(min(rng[0], CLIP)), math.log2(min(rng[1], CLIP))], [y, y],
                    color="black", lw=0.8)
        if target is not None:
            ax.plot([math.log2(target)] * 2, [y - 0.45, y + 0.45], color="red", lw=2)
        ax.text(max(shown, 0) + 0.05, y, (f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x")
                + (" (cut)" if ratio > CLIP else ""), va="center", fontsize=7)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{b[0]}: {b[1]} (vs {b[5]})" for b in bars], fontsize=7)
    ax.axvline(0, color="black", lw=1)
    lo = min([math.log2(b[2]) for b in bars] + [-1])
    hi = max([math.log2(min(b[2], CLIP)) for b in bars] + [1])
    ticks = [t for t in range(math.floor(lo), math.ceil(hi) + 1)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{2.0 ** t:g}x" for t in ticks], fontsize=7)
    ax.set_xlim(math.floor(lo) - 0.2, math.ceil(hi) + 0.6)
    ax.set_xlabel("time per item relative to the reference (log scale; left of 1 is faster); "
                  "red: target; black: range over rounds", fontsize=8)
    m = meta["machine"]
    ax.set_title(f"scratchlm vs references, {m['cpu']}, {m['threads']} threads, "
                 f"{m['date'][:10]}", fontsize=9)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parent / "results"
    p.add_argument("json", nargs="?", type=Path, default=here / "latest.json")
    p.add_argument("-o", "--out", type=Path, default=None, help="default: the JSON's name, .png")
    args = p.parse_args(argv)
    print(plot_results(args.json, args.out or args.json.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
