"""Training throughput (samples/s) of one process vs torchrun DDP on this machine.

    python benchmarks/ddp_throughput.py --stage teacher --steps 40
    python benchmarks/ddp_throughput.py --stage teacher --steps 200 --device cuda --configs 1x0   # on a GPU

Each configuration "PxT" runs P processes with T threads each (T=0: PyTorch's default) for the same
global batch and steps, from a fresh run folder, and reads the samples/s that rank 0 logged at the
last step (training time only: validation is excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="teacher", choices=["teacher", "student"])
    ap.add_argument("--arch", default="", help="default: nafunet (teacher), student (student, no distillation)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patch-size", type=int, default=96)
    ap.add_argument("--configs", default="1x0,1x2,2x1", help="comma-separated PxT (processes x threads)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    from sharpkd.provenance import hardware

    results = []
    for conf in args.configs.split(","):
        nproc, threads = (int(v) for v in conf.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            train_args = [args.stage, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                          "--patch-size", str(args.patch_size), "--val-every", str(10 * args.steps),
                          "--log-every", "10", "--threads", str(threads), "--device", args.device,
                          "--out", str(out)]
            if args.arch:
                train_args += ["--arch", args.arch]
            if args.stage == "student":
                train_args += ["--no-distill"]
            if Path(args.data).exists():
                train_args += ["--data", args.data]
            if nproc == 1:
                cmd = [sys.executable, "-m", "sharpkd.train", *train_args]
            else:
                cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                       "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "sharpkd.train", *train_args]
            env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            last = [r for r in log if r["event"] == "train"][-1]
            row = {"processes": nproc, "threads_per_process": threads or "default", "stage": args.stage,
                   "arch": log[0]["arch"], "global_batch": args.batch_size, "patch": args.patch_size,
                   "steps": args.steps, "samples_per_s": last["samples_per_s"], "device": args.device}
            results.append(row)
            print(row, flush=True)
    res = {"hardware": hardware().split(", torch")[0], "rows": results}
    print(f"\n{res['hardware']}, {args.device}; {args.stage} ({results[0]['arch']}), global batch "
          f"{args.batch_size} x {args.patch_size}px, {args.steps} steps\n")
    print("| processes x threads | samples/s |\n|---|---|")
    for r in results:
        print(f"| {r['processes']} x {r['threads_per_process']} | {r['samples_per_s']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
