"""Hostile files and names handed to `sharpkd sharpen`, checked for tracebacks and for harm to files.

    python benchmarks/hostile_cli.py --out docs/eval/hostile_cli.json

In a fresh temporary folder: every hostile upload of ``benchmarks/hostile_web.py`` (pixel bombs,
foreign formats, malformed and awkward files) goes in one folder next to a real photo, and the CLI
sharpens the folder at once; then single cases that target files and names: tiles too small to
work, temporary names that collide with inputs, symlinks planted where outputs or temporary files
go, output names the CLI cannot honour, several inputs onto one output file, names of 247-255 bytes,
input and output the same file, a FIFO and /dev/zero as inputs.

Before each run every file in the folder is hashed (symlinks are not followed) and afterwards
compared: a file counts as harmed when it changed or disappeared and was not an output the run was
asked to write. Reported: cases, tracebacks (stderr), harmed files, the exit statuses; exit status 1
when any traceback or harmed file was seen.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from hostile_web import awkward, bombs, encode, foreign, malformed  # noqa: E402


def snapshot(root: Path) -> dict[str, str]:
    """Path -> content hash (or link target) of everything under root, links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                out[str(p.relative_to(root))] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    try:
        r = subprocess.run([sys.executable, "-m", "sharpkd", "-q", "sharpen", *args], cwd=cwd, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out"
    return r.returncode, r.stderr + r.stdout


def case(results: list[dict], name: str, root: Path, args: list[str], outputs: set[str] = frozenset(),
         expect_fail: bool = True) -> dict:
    """Run one CLI call in ``root``; record tracebacks and harmed files (anything that changed except
    the named ``outputs``, paths relative to root)."""
    before = snapshot(root)
    rc, log = run(args, root)
    after = snapshot(root)
    harmed = sorted(k for k, v in before.items() if after.get(k) != v and k not in outputs)
    rec = {"case": name, "exit": rc, "traceback": "Traceback" in log, "harmed": harmed,
           "as_expected": (rc != 0) == expect_fail and rc >= 0, "message": log.strip().splitlines()[-1:] if log else []}
    results.append(rec)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="")
    ap.add_argument("--model", default="student")
    args = ap.parse_args()
    import skimage.data

    photo = skimage.data.astronaut()
    small = photo[:48, :64].copy()
    good = encode(photo[100:164, 150:230], "PNG")
    m = ["--model", args.model]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sharpkd-hostile-cli-") as tmp:
        root = Path(tmp)
        # 1. a folder of every hostile file plus one real photo
        (root / "in").mkdir()
        files = {**bombs(small), **foreign(small), **malformed(small), **awkward(photo)}
        for i, (name, (fname, data, _)) in enumerate(files.items()):
            ext = Path(fname).suffix or ".png"
            (root / "in" / f"{i:03d}-{name.replace(' ', '_').replace('/', '_')[:60]}{ext}").write_bytes(data)
        (root / "in" / "real.png").write_bytes(good)
        # with the web server's megapixel limit: a 9000 x 9000 bomb under the CLI's default of 100 MP
        # would be decoded and sharpened (legitimately: it might be a real photo), for minutes
        folder = case(results, f"folder of {len(files)} hostile files + 1 photo", root,
                      ["in", "-o", "out", "--max-megapixels", "40", *m], outputs={"out"}, expect_fail=True)
        folder["outputs_written"] = sorted(p.name for p in (root / "out").iterdir()) if (root / "out").is_dir() else []

        (root / "a.png").write_bytes(good)
        for t in range(1, 6):
            case(results, f"--tile {t}", root, ["a.png", "-o", f"t{t}.png", "--tile", str(t), *m])
        # 2. temporary names and planted links
        (root / ".a.png.partial").write_bytes(good)
        case(results, "input named like the old temporary file", root, [".a.png.partial", "-o", "a.png", "--overwrite",
                                                                         *m], outputs={"a.png"}, expect_fail=False)
        (root / "victim.txt").write_text("precious\n")
        (root / "o").mkdir()
        for planted in [".a.png.partial", ".a.png.tmp", "a.png.tmp"]:
            os.symlink(root / "victim.txt", root / "o" / planted)
        case(results, "links planted beside the output", root, ["a.png", "-o", "o/a.png", *m], outputs={"o/a.png"},
             expect_fail=False)
        os.symlink(root / "victim.txt", root / "o" / "b.png")
        case(results, "output path is a link to another file", root, ["a.png", "-o", "o/b.png", "--overwrite", *m],
             outputs={"o/b.png"}, expect_fail=False)
        os.symlink(root / "victim.txt", root / "link-in.png")
        case(results, "input is a link to a text file", root, ["link-in.png", "-o", "li.png", *m])
        # 3. names the CLI cannot honour
        for out in ["result.gif", "result.heic", "result.avif", "result.exe"]:
            case(results, f"-o {out}", root, ["a.png", "-o", out, *m])
        rec = case(results, "-o noext (a folder, as documented)", root, ["a.png", "-o", "noext", *m],
                   outputs={"noext"}, expect_fail=False)
        rec["as_expected"] = rec["as_expected"] and (root / "noext" / "a.png").is_file()
        (root / "b.png").write_bytes(good)
        case(results, "two inputs, -o one file", root, ["a.png", "b.png", "-o", "one.png", *m])
        case(results, "output is the input", root, ["a.png", "-o", "a.png", *m])
        case(results, "output is the input, --overwrite", root, ["a.png", "-o", "a.png", "--overwrite", *m])
        for n in (247, 251, 255):
            name = "x" * (n - 4) + ".png"
            (root / "long").mkdir(exist_ok=True)
            (root / "long" / name).write_bytes(good)
            case(results, f"{n}-byte file name", root, [f"long/{name}", "-o", "longout", *m],
                 outputs={"longout"}, expect_fail=False)
        case(results, "256-byte output name", root, ["a.png", "-o", "y" * 252 + ".png", *m])
        os.mkfifo(root / "fifo.png")
        case(results, "a FIFO as input", root, ["fifo.png", "-o", "f.png", *m])
        case(results, "/dev/zero as input", root, ["/dev/zero", "-o", "z.png", *m])
        case(results, "a missing input", root, ["nope.png", "-o", "n.png", *m])
        case(results, "an empty folder", root, [str(root / "long" / "missing-dir"), "-o", "e", *m])
        victim_ok = (root / "victim.txt").read_text() == "precious\n"
    summary = {"cases": len(results), "files_in_folder_case": len(files) + 1,
               "tracebacks": sum(r["traceback"] for r in results),
               "harmed_files": sorted({h for r in results for h in r["harmed"]}),
               "unexpected_exit": [f"{r['case']} ({r['exit']})" for r in results if not r["as_expected"]],
               "victim_intact": victim_ok,
               "folder_case": {k: folder[k] for k in ("exit", "message", "outputs_written")}}
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "cases": results}, indent=1) + "\n")
    return 1 if summary["tracebacks"] or summary["harmed_files"] or not victim_ok else 0


if __name__ == "__main__":
    sys.exit(main())
