"""The web app through Flask's test client: every route and every error path."""

import base64
import io
import os
import tempfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sharpkd.web import WebConfig, create_app


def png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def app():
    app = create_app(WebConfig())  # the shipped student, kernel student and teacher, and unsharp masking
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def blurry(photo) -> np.ndarray:
    """The test photo blurred by a Gaussian of sigma 1.5 (uint8)."""
    from sharpkd.degrade import blur, gaussian_kernel

    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    y = blur(x, gaussian_kernel(1.5))[0].permute(1, 2, 0).numpy()
    return (y * 255 + 0.5).astype(np.uint8)


def post(client, url: str, data: bytes | None, filename: str = "photo.png", headers=None, **form):
    if data is not None:
        form["image"] = (io.BytesIO(data), filename)
    return client.post(url, data=form, content_type="multipart/form-data", headers=headers)


def test_healthz_and_models(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json == {"status": "ok",
                                               "models": ["student", "kstudent", "teacher", "unsharp"]}
    models = {m["name"]: m for m in client.get("/api/models").json["models"]}
    assert set(models) == {"student", "kstudent", "teacher", "unsharp"}
    assert models["student"]["params"] < models["teacher"]["params"]
    assert models["kstudent"]["params"] < 150_000 and "camera shake" in models["kstudent"]["label"]
    assert models["student"]["macs_per_pixel"] > 0 and "params" not in models["unsharp"]


def test_index_page_is_self_contained_and_labelled(client):
    r = client.get("/")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    # every input has a label, nothing is loaded from another host
    for ident in ("file", "slider", "demo-file", "demo-blur", "demo-strength", "demo-model"):
        assert f'for="{ident}"' in html
    assert "http://" not in html and "https://" not in html
    assert 'name="viewport"' in html
    for name in ("student", "kstudent", "teacher", "unsharp"):
        assert f'value="{name}"' in html
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200


def test_openapi_documents_every_api_route(app, client):
    r = client.get("/api/openapi.yaml")
    assert r.status_code == 200
    spec = yaml.safe_load(r.data)
    routes = {rule.rule for rule in app.url_map.iter_rules()} - {"/", "/static/<path:filename>",
                                                               "/api/openapi.yaml"}
    assert routes == set(spec["paths"])


def test_sharpen_returns_the_image_same_size_and_format(client, blurry):
    r = post(client, "/api/sharpen", png_bytes(blurry), model="student", scores="1")
    assert r.status_code == 200 and r.mimetype == "image/png"
    out = Image.open(io.BytesIO(r.data))
    assert out.size == (blurry.shape[1], blurry.shape[0]) and out.format == "PNG"
    assert float(r.headers["X-Processing-Time-Ms"]) >= 0
    # the student narrows the edges of a blurred photo
    assert float(r.headers["X-Score-Edge-Width-After-Px"]) < float(r.headers["X-Score-Edge-Width-Before-Px"])


def test_jpeg_in_jpeg_out_and_png_option(client, blurry):
    jpg = png_bytes(blurry, fmt="JPEG", quality=90)
    same = post(client, "/api/sharpen", jpg, "p.jpg", model="unsharp")
    assert same.status_code == 200 and same.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(same.data)).format == "JPEG"
    png = post(client, "/api/sharpen", jpg, "p.jpg", model="unsharp", format="png")
    assert png.mimetype == "image/png" and Image.open(io.BytesIO(png.data)).size == (blurry.shape[1], blurry.shape[0])


def test_json_response_has_image_and_scores(client, blurry):
    r = post(client, "/api/sharpen", png_bytes(blurry), model="student", response="json", preview="1")
    assert r.status_code == 200
    j = r.json
    assert (j["width"], j["height"], j["model"], j["format"]) == (blurry.shape[1], blurry.shape[0], "student", "PNG")
    img = Image.open(io.BytesIO(base64.b64decode(j["image"])))
    assert img.size == (blurry.shape[1], blurry.shape[0])
    assert Image.open(io.BytesIO(base64.b64decode(j["preview"]))).size == img.size
    assert 0 < j["scores"]["edge_width_after_px"] < j["scores"]["edge_width_before_px"]


def test_edge_width_follows_the_restoration(app):
    """The score means something: on a blurred photo the edges are wider than the original's; both
    networks narrow them far more than unsharp masking (which mostly adds contrast), towards the
    original's width, and their PSNR against the original is higher too. (It does not rank teacher and
    student: the teacher deconvolves round blur with a width fitted short on purpose, which leaves its
    edges a little wider than the student's while its PSNR is higher.)"""
    import skimage.data

    from sharpkd.degrade import gaussian_kernel, protocol_degrade
    from sharpkd.metrics import psnr

    photo = np.ascontiguousarray(skimage.data.astronaut()[:256, 128:384])
    blurred = protocol_degrade(photo, gaussian_kernel(2.0), 0)
    client = app.test_client()
    widths, scores = {}, {}
    for m in ("unsharp", "student", "kstudent", "teacher"):
        j = post(client, "/api/sharpen", png_bytes(blurred), model=m, response="json").json
        widths[m] = j["scores"]["edge_width_after_px"]
        out = np.asarray(Image.open(io.BytesIO(base64.b64decode(j["image"]))).convert("RGB"))
        scores[m] = psnr(photo, out)
    before = j["scores"]["edge_width_before_px"]
    assert widths["unsharp"] < before
    assert max(widths["teacher"], widths["student"], widths["kstudent"]) < min(widths["unsharp"], before) - 0.5
    assert min(scores["teacher"], scores["student"], scores["kstudent"]) > scores["unsharp"] + 2
    assert scores["teacher"] > scores["student"]
    flat = post(client, "/api/sharpen", png_bytes(np.full((64, 64, 3), 128, np.uint8)), response="json").json
    assert flat["scores"]["edge_width_before_px"] is None  # no edges, no number


def test_alpha_is_preserved(client, blurry):
    rgba = np.dstack([blurry, np.linspace(0, 255, blurry.size // 3).reshape(blurry.shape[:2]).astype(np.uint8)])
    r = post(client, "/api/sharpen", png_bytes(rgba, "RGBA"), model="student")
    out = np.asarray(Image.open(io.BytesIO(r.data)))
    assert out.shape == rgba.shape
    assert np.array_equal(out[..., 3], rgba[..., 3])


def test_demo_measures_blurred_and_sharpened(client, photo):
    r = post(client, "/api/demo", png_bytes(photo), model="student", blur="gaussian", strength="1.5")
    assert r.status_code == 200
    m = r.json["metrics"]
    assert m["sharpened"]["psnr"] > m["blurred"]["psnr"] and m["sharpened"]["ssim"] > m["blurred"]["ssim"]
    for k in ("original", "blurred", "sharpened"):
        assert Image.open(io.BytesIO(base64.b64decode(r.json[k]))).size == (photo.shape[1], photo.shape[0])
    motion = post(client, "/api/demo", png_bytes(photo), model="unsharp", blur="motion", strength="9", seed="3")
    assert motion.status_code == 200 and motion.json["length"] == 9.0
    for seed in ("\u00b2", "1" * 5000, "-1", "1.5"):  # superscript two passes str.isdigit; int() rejects it
        bad = post(client, "/api/demo", png_bytes(photo), model="unsharp", blur="gaussian", seed=seed)
        assert bad.status_code == 400 and "seed" in bad.json["error"]


def bomb_png() -> bytes:
    """A valid PNG that claims 30000 x 30000 pixels (900 MP) in a few hundred bytes."""
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 30001 * 4)  # only a few rows: enough for the header check
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def animated_gif(photo) -> bytes:
    frames = [Image.fromarray(photo), Image.fromarray(255 - photo)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def float_tiff(photo) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo[..., 0].astype(np.float32) / 255, "F").save(buf, format="TIFF")
    return buf.getvalue()


@pytest.mark.parametrize("case, status", [
    ("no file", 400), ("empty", 400), ("random bytes", 400), ("truncated png", 400), ("bomb", 413),
    ("animated gif", 415), ("float tiff", 415), ("unknown model", 400), ("bad format", 400),
])
def test_bad_uploads_get_json_errors(client, photo, case, status):
    good = png_bytes(photo)
    data, form = {
        "no file": (None, {}),
        "empty": (b"", {}),
        "random bytes": (np.random.default_rng(0).bytes(5000), {}),
        "truncated png": (good[: len(good) // 2], {}),
        "bomb": (bomb_png(), {}),
        "animated gif": (animated_gif(photo), {}),
        "float tiff": (float_tiff(photo), {}),
        "unknown model": (good, {"model": "../../etc/passwd"}),
        "bad format": (good, {"format": "exe"}),
    }[case]
    r = post(client, "/api/sharpen", data, **form)
    assert r.status_code == status, r.json
    assert r.is_json and r.json["status"] == status and r.json["error"]
    assert "Traceback" not in r.get_data(as_text=True)


@pytest.mark.parametrize("form", [{"blur": "swirl"}, {"blur": "gaussian", "strength": "99"},
                                  {"strength": "abc"}, {"seed": "-1"}])
def test_bad_demo_options(client, photo, form):
    r = post(client, "/api/demo", png_bytes(photo), **form)
    assert r.status_code == 400 and r.is_json


def test_upload_over_the_limit_is_413(photo):
    app = create_app(WebConfig(models=("unsharp",), max_upload_mb=0.01))
    r = post(app.test_client(), "/api/sharpen", np.random.default_rng(0).bytes(20_000))
    assert r.status_code == 413 and r.is_json and "0.01 MB" in r.json["error"]


def test_image_over_the_megapixel_limit_is_413(photo):
    app = create_app(WebConfig(models=("unsharp",), max_megapixels=0.001))  # 1000 pixels
    r = post(app.test_client(), "/api/sharpen", png_bytes(photo))
    assert r.status_code == 413 and r.is_json


def test_wrong_method_and_unknown_route_are_json(client):
    assert client.get("/api/sharpen").status_code == 405 and client.get("/api/sharpen").is_json
    assert client.get("/nope").status_code == 404 and client.get("/nope").is_json


def test_busy_server_answers_503_with_retry_after(photo):
    app = create_app(WebConfig(models=("unsharp",), workers=1, queue=0))
    gate = app.extensions["sharpkd"].gate
    with gate:  # one request in flight fills a server with one worker and no queue
        r = post(app.test_client(), "/api/sharpen", png_bytes(photo))
        assert r.status_code == 503 and r.is_json and int(r.headers["Retry-After"]) > 0
    assert post(app.test_client(), "/api/sharpen", png_bytes(photo)).status_code == 200


def test_internal_failure_is_a_json_500_without_traceback(photo):
    from sharpkd.infer import Sharpener

    def broken(x):
        raise RuntimeError("secret internal detail")

    broken.multiple, broken.kind = 1, "classical"
    app = create_app(WebConfig(models=("broken",)), sharpeners={"broken": Sharpener(broken)})
    r = post(app.test_client(), "/api/sharpen", png_bytes(photo))
    assert r.status_code == 500 and r.is_json
    assert "secret" not in r.get_data(as_text=True) and "Traceback" not in r.get_data(as_text=True)
    # the gate was released: the server is not stuck at "busy"
    assert post(app.test_client(), "/api/sharpen", png_bytes(photo)).status_code == 500


def test_nothing_stays_on_disk_and_names_are_not_paths(client, tmp_path):
    """A large upload (spooled by Werkzeug) with a hostile file name leaves no file behind."""
    rng = np.random.default_rng(1)
    big = png_bytes(rng.integers(0, 256, (700, 700, 3), dtype=np.uint8))  # ~1.5 MB, incompressible
    assert len(big) > 1_000_000
    tmp = tempfile.gettempdir()
    before = set(os.listdir(tmp))
    cwd_before = set(os.listdir("."))
    r = post(client, "/api/sharpen", big, filename="../../../tmp/evil.png", model="unsharp")
    assert r.status_code == 200
    assert set(os.listdir(tmp)) - before == set() and set(os.listdir(".")) == cwd_before
    assert "evil" not in r.headers["Content-Disposition"]


def test_large_uploads_go_through_tiles(photo):
    """With a small tile size the student runs tile by tile; the result equals the untiled one."""
    import skimage.data

    from sharpkd.infer import Sharpener

    img = skimage.data.astronaut()[:150, :130]
    tiled = create_app(WebConfig(models=("student",)),
                       sharpeners={"student": Sharpener.from_pretrained("student", tile=128, overlap=96)})
    whole = create_app(WebConfig(models=("student",)),
                       sharpeners={"student": Sharpener.from_pretrained("student", tile=0)})
    a = np.asarray(Image.open(io.BytesIO(post(tiled.test_client(), "/api/sharpen", png_bytes(img)).data)))
    b = np.asarray(Image.open(io.BytesIO(post(whole.test_client(), "/api/sharpen", png_bytes(img)).data)))
    assert a.shape == img.shape and np.abs(a.astype(int) - b).max() <= 1


def test_security_headers_and_dns_rebinding_guard(photo):
    app = create_app(WebConfig(models=("unsharp",)))
    client = app.test_client()
    r = client.get("/")
    csp = r.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Referrer-Policy"] == "same-origin"
    assert client.get("/healthz", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    # a rebound name pointing at the loopback server is refused, as JSON
    r = client.get("/healthz", headers={"Host": "attacker.example:8000"})
    assert r.status_code == 403 and r.is_json and "X-Frame-Options" in r.headers
    # a cross-site form post from another origin is refused; the page's own origin is fine
    bad = post(client, "/api/sharpen", png_bytes(photo), headers={"Origin": "http://evil.example"})
    assert bad.status_code == 403
    # so is an opaque origin (a sandboxed frame or a file: page on any site)
    assert post(client, "/api/sharpen", png_bytes(photo), headers={"Origin": "null"}).status_code == 403
    ok = post(client, "/api/sharpen", png_bytes(photo), headers={"Origin": "http://localhost"})
    assert ok.status_code == 200
    # a public server (no host list) answers to any name
    public = create_app(WebConfig(models=("unsharp",), allowed_hosts=())).test_client()
    assert public.get("/healthz", headers={"Host": "photos.example.org"}).status_code == 200


@pytest.mark.parametrize("shape", [(7, 40), (12, 400), (300, 9)])
def test_tiny_and_very_narrow_images_get_json_not_500(client, shape):
    """The page's own request (json + scores) on images too small or too narrow for SSIM's window."""
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    r = post(client, "/api/sharpen", png_bytes(img), model="student", response="json", scores="1")
    assert r.status_code == 200 and r.is_json and r.json["width"] == shape[1]
    d = post(client, "/api/demo", png_bytes(img), model="unsharp")
    assert d.status_code == 200 and d.json["metrics"]["blurred"]["psnr"] > 0


def test_form_limits_are_reported_as_what_they_are(photo):
    app = create_app(WebConfig(models=("unsharp",)))
    client = app.test_client()
    r = post(client, "/api/sharpen", png_bytes(photo), note="x" * 600_000)  # a 600 kB text field
    assert r.status_code == 413 and r.is_json and "MB" not in r.json["error"]
    big = create_app(WebConfig(models=("unsharp",), max_upload_mb=0.01)).test_client()
    r = post(big, "/api/sharpen", png_bytes(np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)))
    assert r.status_code == 413 and "0.01 MB" in r.json["error"]


@pytest.mark.parametrize("field, value", [("response", "xml"), ("scores", "abc"), ("preview", "2")])
def test_unknown_option_values_are_400_not_ignored(client, photo, field, value):
    r = post(client, "/api/sharpen", png_bytes(photo), **{field: value})
    assert r.status_code == 400 and r.is_json and field in r.json["error"]


@pytest.mark.parametrize("side", [30000, 65535])
def test_headers_declaring_hundreds_of_megapixels_are_413(client, side):
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    r = post(client, "/api/sharpen", png)
    assert r.status_code == 413 and r.is_json
