"""Hostile traffic against a real `sharpkd serve`, the way an attacker on the network would send it.

    python benchmarks/hostile_web.py --out docs/eval/hostile_web.json

Starts `sharpkd serve` with its default limits (25 MB uploads, 40 megapixels) on a loopback port,
in a temporary folder of its own, and sends several hundred requests of my own making, in families:
pixel bombs (tiny files declaring huge images, in every accepted format), formats outside the
allow-list (PostScript named photo.png, PDF, SVG, ICO, ...), malformed and truncated files, odd
shapes and pixel modes, abused forms and parameters, bodies over the limit (sent, and declared far
beyond it), foreign Host/Origin headers, wrong methods and paths. Then five clients loop the bomb
while the health check is timed, and 110 half-sent connections are held open while it is timed again.

Reported: the number of requests, of 5xx answers, of error answers that are not JSON, the slowest
pixel-bomb refusal, the server's peak resident memory (VmHWM from /proc), and the health-check
latencies. Exit status 1 when any 5xx or non-JSON error was seen.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

BOUNDARY = "sharpkdhostile"


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> bytes:
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (name, data, ctype) in files.items():
        out.write(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
                  f"Content-Type: {ctype}\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


# ---- pixel bombs: small files whose headers declare huge images ------------------------------------------
def bomb_png(w: int, h: int, colour_type: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    extra = png_chunk(b"PLTE", bytes(3 * 256)) if colour_type == 3 else b""
    idat = zlib.compress(b"\0" * (w + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bomb_gif(w: int, h: int) -> bytes:
    d = w.to_bytes(2, "little") + h.to_bytes(2, "little")
    return b"GIF89a" + d + b"\x00\x00\x00" + b",\x00\x00\x00\x00" + d + b"\x00\x02\x02D\x01\x00;"


def patched(data: bytes, marker: bytes, offset: int, fmt: str, *values: int) -> bytes:
    """``data`` with the fields at ``offset`` after ``marker`` replaced by ``values`` packed as ``fmt``."""
    i = data.index(marker) + offset
    return data[:i] + struct.pack(fmt, *values) + data[i + struct.calcsize(fmt):]


def bomb_webp(webp: bytes, w: int, h: int) -> bytes:
    """A lossless WebP whose VP8L header declares w x h (14 bits each, stored minus one)."""
    i = webp.index(b"VP8L") + 9  # chunk tag, chunk size, the 0x2f signature byte
    old = int.from_bytes(webp[i:i + 4], "little")
    bits = (old & ~((1 << 28) - 1)) | (w - 1) | ((h - 1) << 14)
    return webp[:i] + bits.to_bytes(4, "little") + webp[i + 4:]


def bombs(small: np.ndarray) -> dict[str, tuple[str, bytes, str]]:
    out = {}
    jpeg = encode(small, "JPEG")
    bmp = encode(small, "BMP")
    webp = encode(small, "WEBP", lossless=True)
    tiff = encode(small, "TIFF")
    for w, h in [(9000, 9000), (30000, 30000), (65535, 65535), (100000, 500), (7000, 6000), (12000, 4000),
                 (40000, 1100), (8000, 5001)]:
        tag = f"{w}x{h}"
        if max(w, h) <= 65535:  # 16-bit sizes in GIF and JPEG headers
            out[f"bomb gif {tag}"] = ("b.gif", bomb_gif(w, h), "image/gif")
        out[f"bomb png gray {tag}"] = ("b.png", bomb_png(w, h), "image/png")
        out[f"bomb png palette {tag}"] = ("b.png", bomb_png(w, h, 3), "image/png")
        if max(w, h) <= 65535:  # a JPEG frame header stores the height first
            out[f"bomb jpeg {tag}"] = ("b.jpg", patched(jpeg, b"\xff\xc0", 5, ">HH", h, w), "image/jpeg")
        out[f"bomb bmp {tag}"] = ("b.bmp", patched(bmp, b"BM", 18, "<ii", w, h), "image/bmp")
        if max(w, h) <= 16384:  # the VP8L header holds 14-bit sizes
            out[f"bomb webp {tag}"] = ("b.webp", bomb_webp(webp, w, h), "image/webp")
        sh, sw = small.shape[:2]
        t = tiff.replace(struct.pack("<HHII", 256, 4, 1, sw), struct.pack("<HHII", 256, 4, 1, w))
        t = t.replace(struct.pack("<HHII", 257, 4, 1, sh), struct.pack("<HHII", 257, 4, 1, h))
        out[f"bomb tiff {tag} named png"] = ("b.png", t, "image/png")
    return out


# ---- formats outside the allow-list ----------------------------------------------------------------------
def foreign(small: np.ndarray) -> dict[str, tuple[str, bytes, str]]:
    out = {
        "eps named png": ("photo.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "image/png"),
        "postscript": ("photo.ps", b"%!PS\n/Times findfont 12 scalefont setfont 72 72 moveto (x) show showpage\n",
                       "application/postscript"),
        "pdf": ("photo.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", "application/pdf"),
        "svg": ("photo.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>', "image/svg+xml"),
        "html": ("photo.png", b"<html><script>alert(1)</script></html>", "image/png"),
        "zip": ("photo.png", b"PK\x03\x04" + bytes(100), "image/png"),
        "json": ("photo.png", b'{"image": "x"}', "application/json"),
    }
    for fmt in ["ICO", "PCX", "TGA", "PPM", "SGI", "IM", "DDS", "XBM", "MSP", "EPS", "PDF", "SPIDER", "BLP"]:
        mode = "1" if fmt in ("XBM", "MSP") else ("F" if fmt == "SPIDER" else None)
        try:
            data = encode(small, fmt, mode)
        except Exception:  # noqa: BLE001 - some writers need extras this Pillow lacks
            continue
        out[f"{fmt.lower()} as png"] = ("photo.png", data, "image/png")
        out[f"{fmt.lower()} as jpeg"] = ("photo.jpg", data, "image/jpeg")
        out[f"{fmt.lower()} own name"] = (f"photo.{fmt.lower()}", data, "application/octet-stream")
    return out


# ---- malformed, truncated and corrupt files ----------------------------------------------------------------
def malformed(small: np.ndarray) -> dict[str, tuple[str, bytes, str]]:
    rng = np.random.default_rng(0)
    png, jpeg = encode(small, "PNG"), encode(small, "JPEG")
    head, rest = png[:33], png[33:]
    iend = rest.rindex(b"IEND") - 4
    pal = encode(small[..., 0], "PNG", "P")
    plte_end = pal.index(b"IDAT") - 4
    out = {
        "empty": ("e.png", b"", "image/png"),
        "png 4-byte eXIf": ("x.png", head + png_chunk(b"eXIf", b"MM\x00\x2a") + rest, "image/png"),
        "png empty iCCP after IDAT": ("x.png", png[:33 + iend] + png_chunk(b"iCCP", b"") + rest[iend:], "image/png"),
        "png 300-byte tRNS": ("x.png", pal[:plte_end] + png_chunk(b"tRNS", bytes(300)) + pal[plte_end:], "image/png"),
        "png bad CRC": ("x.png", png[:29] + b"\0\0\0\0" + png[33:], "image/png"),
        "png huge iTXt": ("x.png", head + png_chunk(b"iTXt", b"k\0\0\0\0\0" + b"x" * 2_000_000) + rest, "image/png"),
        "png chunk length lies": ("x.png", head + struct.pack(">I", 2**31 - 1) + b"tEXt" + b"ab" + rest, "image/png"),
        "jpeg garbage exif": ("x.jpg", jpeg[:2] + b"\xff\xe1\x00\x10Exif\x00\x00MM\x00*\xff\xff\xff\xff" + jpeg[2:],
                              "image/jpeg"),
    }
    for frac in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99):
        out[f"png truncated {frac}"] = ("t.png", png[: int(len(png) * frac)], "image/png")
        out[f"jpeg truncated {frac}"] = ("t.jpg", jpeg[: int(len(jpeg) * frac)], "image/jpeg")
    for n in (1, 2, 7, 33, 100, 1000, 5000, 20_000, 200_000, 2_000_000):
        out[f"random {n} bytes"] = ("r.png", rng.bytes(n), "image/png")
    for name, data, ext in (("jpeg", jpeg, "jpg"), ("png", png, "png")):
        for i in range(12):
            bad = bytearray(data)
            for j in rng.integers(8, len(bad), 4 + 8 * i):
                bad[j] = int(rng.integers(0, 256))
            out[f"{name} corrupted {i}"] = (f"c.{ext}", bytes(bad), f"image/{name}")
    return out


# ---- legal but awkward images -------------------------------------------------------------------------------
def awkward(photo: np.ndarray) -> dict[str, tuple[str, bytes, str]]:
    out = {}
    for h, w in [(1, 1), (2, 3), (5, 5), (10, 10), (11, 11), (1, 500), (500, 1), (3, 2000), (2000, 3), (7, 300),
                 (300, 7), (24, 600), (1, 2), (12, 12), (4, 4000), (4000, 4), (33, 1), (15, 16)]:
        arr = np.resize(photo, (h, w, 3)).astype(np.uint8)
        out[f"shape {h}x{w}"] = (f"s{h}x{w}.png", encode(arr, "PNG"), "image/png")
    crop = photo[:64, :80]
    for mode in ["1", "L", "LA", "P", "PA", "RGBA", "I;16", "I"]:
        try:
            out[f"mode {mode}"] = ("m.png", encode(crop, "PNG", mode), "image/png")
        except Exception:  # noqa: BLE001
            continue
    out["cmyk jpeg"] = ("c.jpg", encode(crop, "JPEG", "CMYK"), "image/jpeg")
    out["16-bit tiff"] = ("t.tif", encode((crop.astype(np.uint16) * 257)[..., 0], "TIFF"), "image/tiff")
    out["animated gif"] = ("a.gif", _animated(crop), "image/gif")
    out["webp"] = ("w.webp", encode(crop, "WEBP"), "image/webp")
    return out


def _animated(crop: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, "GIF", save_all=True, append_images=[Image.fromarray(255 - crop)])
    return buf.getvalue()


class Client:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.results: list[dict] = []

    def send(self, family: str, case: str, method: str, path: str, body: bytes = b"", headers: dict | None = None,
             raw: bytes | None = None) -> dict:
        t = time.perf_counter()
        if raw is not None:
            status, ctype, data = self._raw(raw)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            try:
                h = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
                conn.request(method, path, body=body, headers=h)
                r = conn.getresponse()
                status, ctype, data = r.status, r.getheader("Content-Type", ""), r.read()
            except (ConnectionError, OSError) as e:
                status, ctype, data = 0, "", str(e).encode()
            finally:
                conn.close()
        rec = {"family": family, "case": case, "status": status, "seconds": round(time.perf_counter() - t, 3),
               "json": "application/json" in ctype and _is_json(data)}
        self.results.append(rec)
        return rec

    def _raw(self, request: bytes) -> tuple[int, str, bytes]:
        with socket.create_connection((self.host, self.port), timeout=60) as s:
            try:
                s.sendall(request)
            except OSError:
                pass
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except OSError:
                pass
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0]:
            return 0, "", b""
        ctype = next((v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-type"),
                     "")
        return int(lines[0].split()[1]), ctype, body

    def upload(self, family: str, case: str, file: tuple[str, bytes, str], path: str = "/api/sharpen",
               **fields: str) -> dict:
        body = multipart(fields, {"image": file})
        return self.send(family, case, "POST", path, body,
                         {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def _is_json(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict)


def form_abuse(c: Client, good: tuple[str, bytes, str]) -> None:
    mp = f"multipart/form-data; boundary={BOUNDARY}"
    c.send("form", "no file field", "POST", "/api/sharpen", multipart({"model": "student"}, {}), {"Content-Type": mp})
    c.send("form", "file under another name", "POST", "/api/sharpen", multipart({}, {"photo": good}),
           {"Content-Type": mp})
    c.upload("form", "empty filename", ("", good[1], "image/png"))
    c.upload("form", "path filename", ("../../../etc/passwd", good[1], "image/png"))
    c.upload("form", "NUL in filename", ("a\0b.png", good[1], "image/png"))
    c.upload("form", "10,000-character filename", ("a" * 10_000 + ".png", good[1], "image/png"))
    c.upload("form", "filename with CR LF", ("a\r\nX-Injected: 1.png", good[1], "image/png"))
    c.send("form", "two image fields", "POST", "/api/sharpen",
           multipart({}, {"image": good}) .replace(f"--{BOUNDARY}--".encode(), b"")
           + multipart({}, {"image": good}), {"Content-Type": mp})
    c.send("form", "charset in content type", "POST", "/api/sharpen", multipart({}, {"image": good}),
           {"Content-Type": mp + "; charset=utf-7"})
    c.send("form", "1 MB text field", "POST", "/api/sharpen", multipart({"model": "x" * 1_000_000}, {"image": good}),
           {"Content-Type": mp})
    many = multipart({f"f{i}": "v" for i in range(5000)}, {"image": good})
    c.send("form", "5000 form parts", "POST", "/api/sharpen", many, {"Content-Type": mp})
    c.send("form", "not multipart", "POST", "/api/sharpen", good[1], {"Content-Type": "image/png"})
    c.send("form", "json body", "POST", "/api/sharpen", b'{"image": "aGk="}', {"Content-Type": "application/json"})
    c.send("form", "urlencoded", "POST", "/api/sharpen", b"image=abc",
           {"Content-Type": "application/x-www-form-urlencoded"})
    c.send("form", "boundary missing", "POST", "/api/sharpen", multipart({}, {"image": good}),
           {"Content-Type": "multipart/form-data"})
    c.send("form", "boundary wrong", "POST", "/api/sharpen", multipart({}, {"image": good}),
           {"Content-Type": "multipart/form-data; boundary=other"})
    c.send("form", "unterminated multipart", "POST", "/api/sharpen", multipart({}, {"image": good})[:-40],
           {"Content-Type": mp})
    for field, value in [("model", "nosuch"), ("model", "../../etc/passwd"), ("model", "teacher\0"), ("format", "exe"),
                         ("format", "GIF"), ("response", "xml"), ("scores", "abc"), ("scores", "2"),
                         ("preview", "yes"), ("model", "é" * 300)]:
        c.upload("form", f"{field}={value[:20]!r}", good, **{field: value})
    for field, value in [("seed", "²"), ("seed", "9" * 5000), ("seed", "-1"), ("seed", "1.5"), ("seed", ""),
                         ("seed", "0x10"), ("seed", "１"), ("strength", "nan"), ("strength", "inf"),
                         ("strength", "-1"), ("strength", "1e309"), ("strength", "abc"), ("blur", "swirl"),
                         ("blur", ""), ("blur", "motion\0")]:
        c.upload("demo", f"{field}={value[:20]!r}", good, path="/api/demo", **{field: value})


def oversize(c: Client, good: tuple[str, bytes, str], limit: int) -> None:
    mp = f"multipart/form-data; boundary={BOUNDARY}"
    pad = multipart({}, {"image": ("b.png", b"\0" * (limit + 1_000_000), "image/png")})
    c.send("oversize", "1.04x the limit, sent", "POST", "/api/sharpen", pad, {"Content-Type": mp})
    big = multipart({}, {"image": ("b.png", b"\0" * (2 * limit), "image/png")})
    c.send("oversize", "2x the limit, sent", "POST", "/api/sharpen", big, {"Content-Type": mp})
    for factor in (5, 40, 1000):
        n = factor * limit
        req = (f"POST /api/sharpen HTTP/1.1\r\nHost: 127.0.0.1:{c.port}\r\nContent-Type: {mp}\r\n"
               f"Content-Length: {n}\r\n\r\n").encode() + b"\0" * 65536
        c.send("oversize", f"{factor}x the limit declared, 64 KB sent", "POST", "", raw=req)
    req = (f"POST /api/sharpen HTTP/1.1\r\nHost: 127.0.0.1:{c.port}\r\nContent-Type: {mp}\r\n"
           "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"\0" * 1_000_000
    req += b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(110)) + b"0\r\n\r\n"
    c.send("oversize", "110 MB chunked", "POST", "", raw=req)
    c.send("oversize", "content-length not a number", "POST", "",
           raw=f"POST /api/sharpen HTTP/1.1\r\nHost: 127.0.0.1:{c.port}\r\nContent-Length: lots\r\n\r\n".encode())
    c.send("oversize", "header block of 300 KB", "GET", "",
           raw=f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{c.port}\r\nX-Big: {'a' * 300_000}\r\n\r\n".encode())


def headers_and_paths(c: Client, good: tuple[str, bytes, str]) -> None:
    mp = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    body = multipart({}, {"image": good})
    for host in ["evil.example", "127.0.0.1.evil.example", "localhost.", "", "[::2]", "a" * 300, "localhost:99999",
                 "127.0.0.1@evil.example", "LOCALHOST", "0x7f000001"]:
        c.send("host/origin", f"Host {host[:20]!r}", "POST", "/api/sharpen", body, {**mp, "Host": host})
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1", "file://"]:
        c.send("host/origin", f"Origin {origin}", "POST", "/api/sharpen", body, {**mp, "Origin": origin})
    for method in ["PUT", "DELETE", "PATCH", "TRACE", "OPTIONS", "PROPFIND"]:
        c.send("method/path", f"{method} /api/sharpen", method, "/api/sharpen", body, mp)
    c.send("method/path", "GET /api/sharpen", "GET", "/api/sharpen")
    for path in ["/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2fsetup.py",
                 "/" + "a" * 8000, "/api/sharpen?" + "x=1&" * 3000, "/%00", "/api/models/../../healthz",
                 "/static/app.js%00.png", "/nonexistent", "/api/openapi.yaml/.."]:
        c.send("method/path", f"GET {path[:30]!r}", "GET", path)
    c.send("method/path", "bad request line", "GET", "", raw=b"GARBAGE\r\n\r\n")
    c.send("method/path", "HTTP/0.9", "GET", "", raw=b"GET /\r\n\r\n")
    c.send("method/path", "binary request line", "GET", "", raw=bytes(range(256)) + b"\r\n\r\n")


def concurrent_bombs(c: Client, bomb: tuple[str, bytes, str], clients: int, seconds: float) -> dict:
    """``clients`` threads loop the bomb upload; meanwhile the health check is timed."""
    stop = time.monotonic() + seconds
    workers = [Client(c.host, c.port) for _ in range(clients)]

    def loop(w: Client) -> None:
        while time.monotonic() < stop:
            w.upload("concurrent bombs", "gif 9000x9000 loop", bomb)

    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    health = []
    while time.monotonic() < stop:
        health.append(c.send("health", "during bomb loop", "GET", "/healthz")["seconds"])
        time.sleep(0.2)
    for t in threads:
        t.join()
    for w in workers:
        c.results.extend(w.results)
    return {"requests": sum(len(w.results) for w in workers), "health_checks": len(health),
            "health_max_s": max(health), "health_median_s": float(np.median(health))}


def half_sent(c: Client, n: int) -> dict:
    conns = []
    try:
        for _ in range(n):
            s = socket.create_connection((c.host, c.port), timeout=10)
            s.sendall(b"POST /api/sharpen HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            conns.append(s)
        time.sleep(1)
        rec = c.send("health", f"with {n} half-sent connections open", "GET", "/healthz")
    finally:
        for s in conns:
            s.close()
    return {"connections": n, "health_status": rec["status"], "health_s": rec["seconds"]}


def stalled_body(c: Client, limit: int) -> dict:
    """A body declared (2x the limit: under waitress's cut-off) but never sent: nobody is left to answer,
    so the server should just drop the connection after its channel timeout (30 s)."""
    u = c.host, c.port
    t = time.perf_counter()
    with socket.create_connection(u, timeout=120) as s:
        s.sendall((f"POST /api/sharpen HTTP/1.1\r\nHost: 127.0.0.1:{c.port}\r\nContent-Type: multipart/form-data; "
                   f"boundary={BOUNDARY}\r\nContent-Length: {2 * limit}\r\n\r\n").encode() + b"\0" * 65536)
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
    return {"answer": data[:40].decode("latin-1"), "closed_after_s": round(time.perf_counter() - t, 1)}


def rss_peak(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="", help="write the figures and every request's outcome to this JSON file")
    ap.add_argument("--model", default="", help="models to serve (default: the server's default set)")
    args = ap.parse_args()
    import skimage.data

    photo = skimage.data.astronaut()
    small = photo[:48, :64].copy()
    good = ("photo.png", encode(photo[100:228, 150:310], "PNG"), "image/png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="sharpkd-hostile-")
    env = {**os.environ, "TMPDIR": tmp}
    models = ["--model", args.model] if args.model else []
    proc = subprocess.Popen([sys.executable, "-m", "sharpkd", "serve", "--port", str(port), *models],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    c = Client("127.0.0.1", port)
    try:
        for _ in range(240):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        c.send("sanity", "health", "GET", "/healthz")
        base_rss = rss_peak(proc.pid)
        ok = c.upload("sanity", "a real photo", good, response="json")
        for name, f in bombs(small).items():
            c.upload("pixel bombs", name, f)
        for name, f in foreign(small).items():
            c.upload("foreign formats", name, f)
        for name, f in malformed(small).items():
            c.upload("malformed", name, f)
        for name, f in awkward(photo).items():
            c.upload("awkward images", name, f, response="json", scores="1")
            c.upload("awkward images (demo)", name, f, path="/api/demo")
        form_abuse(c, good)
        oversize(c, good, 25 * 1024 * 1024)
        headers_and_paths(c, good)
        conc = concurrent_bombs(c, ("b.gif", bomb_gif(9000, 9000), "image/gif"), clients=5, seconds=10)
        half = half_sent(c, 110)
        stalled = stalled_body(c, 25 * 1024 * 1024)
        after = c.send("sanity", "health after everything", "GET", "/healthz")
        peak = rss_peak(proc.pid)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    log = out.decode(errors="replace")
    res = c.results
    errors = [r for r in res if r["status"] >= 400 or r["status"] == 0]
    bombs_t = [r["seconds"] for r in res if r["family"] in ("pixel bombs", "concurrent bombs")]
    summary = {
        "requests": len(res),
        "families": dict(Counter(r["family"] for r in res)),
        "statuses": dict(sorted(Counter(str(r["status"]) for r in res).items())),
        "responses_5xx": sum(r["status"] >= 500 for r in res),
        "errors_not_json": [f"{r['family']}: {r['case']} ({r['status']})" for r in errors if not r["json"]],
        "pixel_bomb_refusal_max_s": max(bombs_t), "pixel_bombs": len(bombs_t),
        "pixel_bombs_not_413": [r["case"] for r in res if r["family"] == "pixel bombs" and r["status"] != 413],
        "server_rss_mb_after_start": round(base_rss), "server_rss_peak_mb": round(peak),
        "sanity_photo_status": ok["status"], "health_after_status": after["status"],
        "concurrent_bombs": conc, "half_sent": half, "stalled_body": stalled,
        "traceback_in_server_log": "Traceback" in log,
        "tmpdir_left_files": sorted(os.listdir(tmp)),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        # the thousands of identical bomb-loop requests are only in the summary
        listed = [r for r in res if r["family"] != "concurrent bombs"]
        Path(args.out).write_text(json.dumps({"summary": summary, "requests": listed}, indent=1) + "\n")
    bad = summary["responses_5xx"] or summary["errors_not_json"] or summary["traceback_in_server_log"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
