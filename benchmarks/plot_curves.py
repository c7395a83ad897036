"""Plot validation gain (dB over the blurred input) against training wall time for several runs,
and print a table of the figures the plot shows.

    python benchmarks/plot_curves.py runs/curves/* --out docs/teacher_curves.png --md docs/teacher_curves.md
"""

import argparse
import json
from pathlib import Path


def read_run(run: Path) -> dict:
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    start = next(r for r in recs if r["event"] == "start")
    vals = [r for r in recs if r["event"] == "val"]
    cfg = json.loads((run / "config.json").read_text())
    return {"name": run.name, "start": start, "vals": vals, "config": cfg}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--md", type=Path, help="markdown table to write")
    ap.add_argument("--title", default="Validation gain per CPU-minute")
    ap.add_argument("--x", choices=["minutes", "steps"], default="minutes", help="horizontal axis")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_run(r) for r in args.runs if (r / "log.jsonl").exists()]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    rows = ["| run | arch | params | MACs/px | threads | steps | minutes | val gain (dB) | best (dB) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if not r["vals"]:
            continue
        t = [v["elapsed_s"] / 60 if args.x == "minutes" else v["step"] for v in r["vals"]]
        g = [v["val_gain"] for v in r["vals"]]
        label = r["name"] if r["name"] == r["config"]["arch"] else f"{r['name']} ({r['config']['arch']})"
        ax.plot(t, g, marker="o", ms=3, label=label)
        last = r["vals"][-1]
        rows.append(f"| {r['name']} | {r['config']['arch']} | {r['start']['params']:,} | "
                    f"{r['start']['macs_per_pixel']:,.0f} | {r['config']['threads'] or 'default'} | {last['step']} | "
                    f"{last['elapsed_s'] / 60:.1f} | {last['val_gain']:+.3f} | {max(g):+.3f} |")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("training wall time (minutes)" if args.x == "minutes" else "training steps")
    ax.set_ylabel("hold-out PSNR gain over blurred input (dB)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    table = "\n".join(rows)
    print(table)
    if args.md:
        args.md.write_text(table + "\n")


if __name__ == "__main__":
    main()
