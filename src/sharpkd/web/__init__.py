"""The sharpkd web app: upload a blurry photo, see it sharpened beside the original, download it.

``create_app()`` is a Flask application factory. Models are loaded once, when the app is created,
and shared by all requests. Uploads are decoded from memory (file names are never used as paths)
and every request runs through the same :class:`sharpkd.infer.Sharpener` as the CLI. A gate bounds
the work in flight: ``workers`` requests compute at once, ``queue`` more may wait, and anything
beyond gets ``503`` with ``Retry-After`` instead of piling up in memory.

Run it under a production WSGI server with ``sharpkd serve`` (waitress).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request, send_file
from werkzeug.exceptions import HTTPException

from sharpkd.imageio import (
    MAX_PIXELS,
    ImageReadError,
    ImageTooLargeError,
    LoadedImage,
    UnsupportedImageError,
    encode_image,
    read_image,
)

if TYPE_CHECKING:
    from sharpkd.infer import Sharpener

HERE = Path(__file__).parent
MODEL_INFO = {
    "student": ("Student (fast)", "the small distilled network"),
    "teacher": ("Teacher (best, slow)",
                "estimates the photo's blur: camera shake is inverted with a learned prior, other blur goes to the "
                "teacher network"),
    "kstudent": ("Kernel student (camera shake, a few seconds)",
                 "the small network, told the photo's blur: the teacher's estimate on a reduced crop and one "
                 "Wiener deconvolution"),
    "teacher-net": ("Teacher network", "the large network the student learned from"),
    "unsharp": ("Unsharp mask (classical)", "a classical filter: image + (image - Gaussian blur)"),
}
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "TIFF": "image/tiff", "BMP": "image/bmp"}
EXTENSION = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
DEMO_BLURS = {"gaussian": ("sigma", 0.3, 5.0), "defocus": ("radius", 0.5, 8.0), "motion": ("length", 2.0, 40.0)}


class ApiError(Exception):
    """An error answered as JSON with an HTTP status and, for 503, a Retry-After header."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


@dataclass
class Gate:
    """At most ``workers`` requests compute at once and ``queue`` more wait; the rest are refused."""

    workers: int = 1
    queue: int = 4
    _admitted: threading.BoundedSemaphore = field(init=False)
    _compute: threading.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.queue < 0:
            raise ValueError("workers must be >= 1 and queue >= 0")
        self._admitted = threading.BoundedSemaphore(self.workers + self.queue)
        self._compute = threading.Semaphore(self.workers)

    def __enter__(self) -> Gate:
        if not self._admitted.acquire(blocking=False):
            raise ApiError(503, "the server is busy; try again shortly", retry_after=2)
        self._compute.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._compute.release()
        self._admitted.release()


@dataclass
class WebConfig:
    models: tuple[str, ...] = ("student", "kstudent", "teacher", "unsharp")
    backend: str = "torch"  # torch or onnx, for the trained models
    max_upload_mb: float = 25.0
    max_megapixels: float = 40.0  # decoded size limit of one upload (memory bound)
    workers: int = 1
    queue: int = 4
    tile: int = 512
    # Host names the server answers to; a request naming any other host gets 403 (stops DNS rebinding,
    # which lets a page on another site reach a loopback server). Empty: any host (a public server).
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")


def _load_sharpeners(cfg: WebConfig) -> dict[str, Sharpener]:
    from sharpkd.infer import CLASSICAL, Sharpener

    out = {}
    for name in cfg.models:
        backend = "torch" if name in CLASSICAL else cfg.backend
        out[name] = Sharpener.from_pretrained(name, tile=cfg.tile, backend=backend)
    return out


def _model_facts(name: str, sharpener) -> dict:
    """Name, label, description and (for networks) parameters and MACs per pixel."""
    import torch

    from sharpkd.checkpoint import count_params, load_model, macs_per_pixel
    from sharpkd.infer import CLASSICAL

    label, description = MODEL_INFO.get(name, (Path(name).stem, "a trained model"))
    facts = {"name": name, "label": label, "description": description}
    net = sharpener.model if isinstance(sharpener.model, torch.nn.Module) else None
    if net is None and name not in CLASSICAL:
        try:
            net = load_model(name)[0]  # an ONNX-backed model: count on its PyTorch original
        except Exception:  # noqa: BLE001 - the facts are optional (a bare .onnx file has none)
            net = None
    if net is not None:
        facts.update(params=count_params(net), macs_per_pixel=round(macs_per_pixel(net)))
    return facts


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class AppState:
    """What the views share, kept in ``app.extensions["sharpkd"]``: the models, their facts for the
    page, the work gate and the configuration."""

    config: WebConfig
    models: dict[str, Sharpener]
    facts: list
    gate: Gate

    @property
    def max_pixels(self) -> int:
        return int(self.config.max_megapixels * 1e6)


bp = Blueprint("sharpkd", __name__)


def state() -> AppState:
    return current_app.extensions["sharpkd"]


def create_app(config: WebConfig | None = None, sharpeners: dict[str, Sharpener] | None = None) -> Flask:
    """The Flask app. ``sharpeners`` (name -> Sharpener) replaces loading the shipped models."""
    cfg = config or WebConfig()
    app = Flask(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    app.config["MAX_CONTENT_LENGTH"] = int(cfg.max_upload_mb * 1024 * 1024)
    models = sharpeners if sharpeners is not None else _load_sharpeners(cfg)
    if not models:
        raise ValueError("the web app needs at least one model")
    app.extensions["sharpkd"] = AppState(cfg, models, [_model_facts(n, sh) for n, sh in models.items()],
                                         Gate(cfg.workers, cfg.queue))
    app.register_blueprint(bp)
    return app


# ---- request helpers -------------------------------------------------------------------------------
def upload(field_name: str = "image") -> LoadedImage:
    """The uploaded image of ``field_name``, decoded from memory within this server's size limit."""
    st = state()
    f = request.files.get(field_name)
    if f is None:
        raise ApiError(400, f"no file in the form field '{field_name}'")
    data = f.read()
    if not data:
        raise ApiError(400, "the uploaded file is empty")
    try:
        # the header's declared size is checked against this server's limit before anything is decoded
        img = read_image(io.BytesIO(data), name="the upload", max_pixels=min(MAX_PIXELS, st.max_pixels))
    except ImageTooLargeError:
        raise ApiError(413, f"the image is larger than this server's limit of {st.config.max_megapixels:g} "
                            "megapixels") from None
    except UnsupportedImageError as e:
        raise ApiError(415, str(e)) from None
    except ImageReadError as e:
        raise ApiError(400, str(e)) from None
    return img


def model_name(default: str | None = None) -> str:
    models = state().models
    name = request.form.get("model") or default or next(iter(models))
    if name not in models:
        raise ApiError(400, f"unknown model {name!r}; this server has: {', '.join(models)}")
    return name


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def flag(name: str, default: bool = False) -> bool:
    v = request.form.get(name, request.args.get(name))
    if v is None:
        return default
    if v.lower() not in TRUE + FALSE:
        raise ApiError(400, f"{name} must be 1 or 0")
    return v.lower() in TRUE


SSIM_MIN_SIDE = 11  # SSIM's Gaussian window (sigma 1.5) is 11 x 11: smaller images have no score


def ssim_or_none(a: np.ndarray, b: np.ndarray) -> float | None:
    from sharpkd.metrics import ssim

    return round(ssim(a, b), 4) if min(a.shape[:2]) >= SSIM_MIN_SIDE else None


def edge_width(rgb: np.ndarray) -> float | None:
    """How wide the photo's edges are, in pixels: the sigma of the Gaussian blur that would make a
    sharp step edge as wide (Zhuo and Sim's re-blur ratio at the strongest edges, median; see
    :func:`sharpkd.deblur.estimate.edge_sigma`). Lower is sharper; sharp photos measure about 1-1.3 px.
    None when the photo has too few edges to say (flat, tiny)."""
    from sharpkd.deblur.estimate import edge_sigma

    if min(rgb.shape[:2]) < 32:
        return None
    w = edge_sigma(rgb)
    return round(w, 2) if w > 0 else None


def sharpen(name: str, img: LoadedImage) -> tuple[LoadedImage, float]:
    t0 = time.perf_counter()
    out = state().models[name].sharpen_image(img)
    return out, time.perf_counter() - t0


# ---- pages and API -----------------------------------------------------------------------------------
@bp.get("/")
def index():
    st = state()
    return render_template("index.html", models=st.facts, max_upload_mb=st.config.max_upload_mb,
                           max_megapixels=st.config.max_megapixels, demo_blurs=DEMO_BLURS)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok", models=list(state().models))


@bp.get("/api/models")
def api_models():
    return jsonify(models=state().facts)


@bp.get("/api/openapi.yaml")
def openapi():
    return send_file(HERE / "openapi.yaml", mimetype="application/yaml")


def _sharpen_response(name: str, out: LoadedImage, out_fmt: str, data: bytes, seconds: float, scores: dict,
                      preview: str | None, want_json: bool) -> Response:
    h, w = out.rgb.shape[:2]
    meta = {"model": name, "width": w, "height": h, "format": out_fmt, "mime": MIME[out_fmt],
            "extension": EXTENSION[out_fmt], "time_ms": round(seconds * 1000, 1), "scores": scores}
    if want_json:
        meta["image"] = _b64(data)
        if preview:  # a PNG of the upload for browsers that cannot show its format (TIFF)
            meta["preview"] = preview
        return jsonify(meta)
    resp = Response(data, mimetype=MIME[out_fmt])
    resp.headers["Content-Disposition"] = f'attachment; filename="sharpened{EXTENSION[out_fmt]}"'
    resp.headers["X-Processing-Time-Ms"] = str(meta["time_ms"])
    for k, v in scores.items():
        resp.headers[f"X-Score-{k.replace('_', '-').title()}"] = "" if v is None else str(v)
    return resp


@bp.post("/api/sharpen")
def api_sharpen():
    name = model_name()
    fmt = request.form.get("format", "same").lower()
    if fmt not in ("same", "png"):
        raise ApiError(400, "format must be 'same' or 'png'")
    response = request.form.get("response", "image")
    if response not in ("image", "json"):
        raise ApiError(400, "response must be 'image' or 'json'")
    want_json = response == "json"
    want_scores, want_preview = flag("scores", default=want_json), flag("preview")  # checked before any work
    with state().gate:  # admitted before decoding, so waiting requests hold only their compressed upload
        img = upload()
        out_fmt = "PNG" if fmt == "png" or img.format not in MIME else img.format  # e.g. a GIF comes back as PNG
        out, seconds = sharpen(name, img)
        scores = {}
        if want_scores:
            scores["edge_width_before_px"] = edge_width(img.rgb)
            scores["edge_width_after_px"] = edge_width(out.rgb)
        data = encode_image(out, out_fmt)
        preview = _b64(encode_image(img, "PNG")) if want_json and want_preview else None
    return _sharpen_response(name, out, out_fmt, data, seconds, scores, preview, want_json)


def _demo_request() -> tuple[str, str, float, int]:
    """Model, blur kind, strength and seed of a demo request, checked."""
    name = model_name()
    kind = request.form.get("blur", "gaussian")
    if kind not in DEMO_BLURS:
        raise ApiError(400, f"blur must be one of {', '.join(DEMO_BLURS)}")
    param, lo, hi = DEMO_BLURS[kind]
    try:
        strength = float(request.form.get("strength", 2.0 if kind == "gaussian" else 10.0))
    except ValueError:
        raise ApiError(400, "strength must be a number") from None
    if not lo <= strength <= hi:
        raise ApiError(400, f"{param} of {kind} blur must be between {lo:g} and {hi:g}")
    seed = request.form.get("seed", "0")
    # isascii: str.isdigit accepts superscripts such as "²", which int() rejects
    if not (seed.isascii() and seed.isdigit() and len(seed) <= 9):
        raise ApiError(400, "seed must be an integer from 0 to 999999999")
    return name, kind, strength, int(seed)


@bp.post("/api/demo")
def api_demo():
    from sharpkd.degrade import make_kernel, protocol_degrade
    from sharpkd.metrics import psnr

    name, kind, strength, seed = _demo_request()
    param = DEMO_BLURS[kind][0]
    kernel = make_kernel(kind, **{param: strength}, seed=seed)
    with state().gate:
        img = upload()
        sharp8 = np.round(img.rgb * 255).astype(np.uint8)
        blurred8 = protocol_degrade(sharp8, kernel, seed)  # blur, 1/255 noise, 8-bit rounding
        blurred = LoadedImage(blurred8.astype(np.float32) / 255.0, None, "RGB", "PNG")
        out, seconds = sharpen(name, blurred)
        out8 = np.round(out.rgb * 255).astype(np.uint8)
        metrics = {k: {"psnr": round(psnr(v, sharp8), 2), "ssim": ssim_or_none(v, sharp8)}
                   for k, v in (("blurred", blurred8), ("sharpened", out8))}
        result = {"model": name, "blur": kind, param: strength, "time_ms": round(seconds * 1000, 1),
                  "metrics": metrics, "width": int(sharp8.shape[1]), "height": int(sharp8.shape[0]),
                  "original": _b64(encode_image(LoadedImage(img.rgb), "PNG")),
                  "blurred": _b64(encode_image(blurred, "PNG")), "sharpened": _b64(encode_image(out, "PNG"))}
    return jsonify(result)


# ---- every response: host and origin checks, security headers ------------------------------------------
SECURITY_HEADERS = {
    # scripts and styles come from this server only; result images are data: and blob: URLs
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin rather than no-referrer: under no-referrer browsers send "Origin: null" with the page's own
    # POSTs, and null must be refused (sandboxed frames and file: pages on any site send it too)
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _hostname(netloc: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``[::1]`` (lower case)."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[: netloc.find("]") + 1]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


@bp.before_app_request
def check_host_and_origin():
    allowed = state().config.allowed_hosts
    host = _hostname(request.host)
    if allowed and host not in allowed:
        raise ApiError(403, "this server does not answer to that host name")
    origin = request.headers.get("Origin")
    if request.method == "POST" and origin:
        from urllib.parse import urlsplit

        if origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower():
            raise ApiError(403, "cross-site requests are not accepted")


@bp.after_app_request
def security_headers(resp: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


# ---- errors: always JSON, never a traceback ------------------------------------------------------------
@bp.app_errorhandler(ApiError)
def api_error(e: ApiError):
    resp = jsonify(error=e.message, status=e.status)
    resp.status_code = e.status
    if e.retry_after is not None:
        resp.headers["Retry-After"] = str(e.retry_after)
    return resp


@bp.app_errorhandler(HTTPException)
def http_error(e: HTTPException):
    message = e.description or e.name
    if e.code == 413:
        limit = state().config.max_upload_mb
        if (request.content_length or 0) > limit * 1024 * 1024:
            message = f"the upload is larger than this server's limit of {limit:g} MB"
        else:  # Flask's own form limits: a text field over 500 kB or more than 1000 parts
            message = "the form has too many parts or a text field that is too large; send one image file"
    resp = jsonify(error=message, status=e.code)
    resp.status_code = e.code or 500
    return resp


@bp.app_errorhandler(Exception)
def unexpected(e: Exception):
    current_app.logger.exception("unhandled error")
    resp = jsonify(error="internal error while processing the image", status=500)
    resp.status_code = 500
    return resp


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas. Each of the server's threads would otherwise get an
    arena of its own and keep freed tensor memory there: with 4 concurrent clients the peak RSS
    measured 964 MB by default and 520 MB with 2 arenas (benchmarks/web_load.py). No-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, n))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def _json_error_channel():
    """A waitress channel class whose own error answers (a body far over the limit, a malformed request
    line or headers: refused before the app sees them) are JSON like the app's, with the same
    security headers, instead of waitress's plain text."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        def execute(self):
            e = self.request.error
            body = json.dumps({"error": f"{e.reason}: {e.body}", "status": e.code}).encode()
            self.status = f"{e.code} {e.reason}"
            self.response_headers.extend([("Content-Type", "application/json"), *SECURITY_HEADERS.items()])
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonErrorChannel(HTTPChannel):
        error_task_class = JsonErrorTask

    return JsonErrorChannel


def serve(cfg: WebConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the app with waitress (a production WSGI server)."""
    import os

    import torch
    from waitress import create_server

    limit_malloc_arenas()
    # the CPU threads are shared by the requests computing at once
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.workers))
    app = create_app(cfg)
    print(f"sharpkd web app on http://{host}:{port}/ (models: {', '.join(cfg.models)}; "
          f"{cfg.workers} worker(s), queue {cfg.queue}, uploads up to {cfg.max_upload_mb:g} MB)", flush=True)
    # enough connection threads for the admitted requests plus a few for pages and health checks
    # the app refuses bodies over the limit itself (from Content-Length, before reading them); waitress's
    # own cut-off stops bodies far beyond it before they are buffered, answering JSON too (above)
    # idle or half-sent connections cost no thread (waitress reads requests asynchronously) but count
    # against its connection limit (100 by default): allow more, and drop the silent ones after 30 s
    server = create_server(app, host=host, port=port, threads=cfg.workers + cfg.queue + 4, ident="sharpkd",
                           max_request_body_size=4 * int(cfg.max_upload_mb * 1024 * 1024) + 1024 * 1024,
                           connection_limit=1000, channel_timeout=30, cleanup_interval=10)
    channel = _json_error_channel()
    # one listening socket: the server itself; several (e.g. IPv4 and IPv6): a map of them
    for listener in [server, *getattr(server, "map", {}).values()]:
        if hasattr(listener, "channel_class"):
            listener.channel_class = channel
    server.run()


__all__ = ["ApiError", "AppState", "Gate", "WebConfig", "bp", "create_app", "serve"]
