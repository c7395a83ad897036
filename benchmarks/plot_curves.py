"""Plot validation gain (dB over the blurred input) against training wall time for several runs,
and print a table of the figures the plot shows.

    python benchmarks/plot_curves.py runs/curves/* --out docs/teacher_curves.png --md docs/teacher_curves.md
    python benchmarks/plot_curves.py --chain teacher=runs/teacher,runs/teacher-w,... --out docs/chains.png

``--chain LABEL=RUN,RUN,...`` draws runs that continue one another (each initialised from the one
before) as one curve, with steps and minutes added up; a run that was stopped early counts up to
its last validation.
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


def chain(label: str, paths: list[Path]) -> dict:
    """Runs that continue one another as one run: validation steps and times offset by the totals
    of the runs before (up to each run's last validation)."""
    parts = [read_run(p) for p in paths]
    vals, step0, t0 = [], 0, 0.0
    for part in parts:
        for v in part["vals"]:
            vals.append({**v, "step": v["step"] + step0, "elapsed_s": v["elapsed_s"] + t0})
        if part["vals"]:
            step0, t0 = vals[-1]["step"], vals[-1]["elapsed_s"]
    threads = sorted({p["config"]["threads"] for p in parts})
    last = parts[-1]
    return {"name": label, "start": last["start"], "vals": vals,
            "config": {**last["config"], "threads": "/".join(str(t) for t in threads)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--chain", action="append", default=[], metavar="LABEL=RUN,RUN,...",
                    help="runs that continue one another, drawn as one curve (repeatable)")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--md", type=Path, help="markdown table to write")
    ap.add_argument("--title", default="Validation gain per CPU-minute")
    ap.add_argument("--x", choices=["minutes", "steps"], default="minutes", help="horizontal axis")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_run(r) for r in args.runs if (r / "log.jsonl").exists()]
    for spec in args.chain:
        label, _, names = spec.partition("=")
        if not names:
            ap.error(f"--chain wants LABEL=RUN,RUN,..., got {spec!r}")
        runs.append(chain(label, [Path(n) for n in names.split(",")]))
    if not runs:
        ap.error("no runs with a log.jsonl given")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    rows = ["| run | arch | params | MACs/px | threads | steps | minutes | val gain (dB) | best (dB) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if not r["vals"]:
            continue
        t = [v["elapsed_s"] / 60 if args.x == "minutes" else v["step"] for v in r["vals"]]
        g = [v["val_gain"] for v in r["vals"]]
        label = r["name"] if r["config"]["arch"] in r["name"] else f"{r['name']} ({r['config']['arch']})"
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
