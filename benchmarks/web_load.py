"""Load benchmark of the web app (not a test): N concurrent clients x M requests on loopback.

Starts `sharpkd serve` (unless --url is given), sends multipart uploads of one photo to
/api/sharpen from concurrent clients, and prints errors, 503s, latency percentiles, throughput
and the server's peak resident memory (VmHWM from /proc). A client that gets 503 waits for the
Retry-After seconds and tries again, as a polite client would; those retries are counted.

    python benchmarks/web_load.py --clients 16 --requests 50
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_photo(width: int, height: int) -> bytes:
    """A real photograph (scikit-image's astronaut, resized), blurred, as JPEG bytes."""
    import skimage.data
    from PIL import ImageFilter

    im = Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.filter(ImageFilter.GaussianBlur(1.5)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def multipart(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    boundary = "sharpkd-load-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of the process (VmHWM), in MB; NaN where /proc is not available."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=50, help="requests per client")
    ap.add_argument("--model", default="student")
    ap.add_argument("--size", default="640x480", help="photo size WxH")
    ap.add_argument("--workers", type=int, default=1, help="server: requests computed at once")
    ap.add_argument("--queue", type=int, default=8, help="server: requests that may wait")
    ap.add_argument("--url", help="an already running server (then RSS is not measured)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    from sharpkd.provenance import hardware

    w, h = map(int, args.size.lower().split("x"))
    body, ctype = multipart({"model": args.model}, test_photo(w, h))

    proc = None
    if args.url:
        host, port = args.url.replace("http://", "").rstrip("/").split(":")
        port = int(port)
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            host, port = "127.0.0.1", s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "sharpkd.cli", "serve", "--port", str(port), "--model",
                                 args.model, "--workers", str(args.workers), "--queue", str(args.queue)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.5)
        else:
            proc.kill()
            print("the server did not start", file=sys.stderr)
            return 1
    idle_rss = peak_rss_mb(proc.pid) if proc else float("nan")

    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    busy = 0

    def client(_: int) -> None:
        nonlocal busy
        conn = http.client.HTTPConnection(host, port, timeout=300)
        for _ in range(args.requests):
            t0 = time.perf_counter()
            while True:
                try:
                    conn.request("POST", "/api/sharpen", body, {"Content-Type": ctype})
                    r = conn.getresponse()
                    data = r.read()
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=300)
                    with lock:
                        errors.append(f"connection: {e}")
                    break
                if r.status == 503:
                    with lock:
                        busy += 1
                    time.sleep(float(r.getheader("Retry-After", "1")))
                    continue
                if r.status != 200:
                    with lock:
                        errors.append(f"HTTP {r.status}: {data[:200]!r}")
                elif Image.open(io.BytesIO(data)).size != (w, h):
                    with lock:
                        errors.append("wrong output size")
                else:
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                break
        conn.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(client, range(args.clients)))
    wall = time.perf_counter() - t0
    rss = peak_rss_mb(proc.pid) if proc else float("nan")
    if proc:
        proc.terminate()
        proc.wait(timeout=10)

    lat = np.array(latencies) * 1000
    res = {
        "machine": hardware().split(", torch")[0],
        "model": args.model, "image": f"{w}x{h} JPEG", "clients": args.clients, "requests_per_client": args.requests,
        "server": f"waitress, {args.workers} worker(s), queue {args.queue}",
        "ok": int(lat.size), "errors": len(errors), "busy_503_retried": busy,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if lat.size else None,
        "throughput_rps": round(lat.size / wall, 2), "wall_s": round(wall, 1),
        "server_rss_idle_mb": round(idle_rss, 1), "server_peak_rss_mb": round(rss, 1),
    }
    for k, v in res.items():
        print(f"{k:22s} {v}")
    for e in errors[:5]:
        print("  error:", e)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
