"""The benchmark protocol of ``shared/BENCHMARK.md``, as ``sharpkd eval`` runs it.

For every image i (sorted file names) and degradation j in (gauss1, gauss2, gauss3, motion):
blur each channel in float64 with ``scipy.ndimage.convolve(mode="reflect")`` (Gaussian sigma = N on a
(2*ceil(3 sigma)+1)^2 grid, or Levin kernel k{i mod 8 + 1}, re-centred by its centre of mass since
protocol version 2), add N(0, 1/255) noise from
``numpy.random.default_rng(1000 j + i)``, round to uint8. Methods see only that uint8 image (the
oracle Wiener row alone is also given the true kernel). Scores: PSNR (uint8, range 255, whole image)
and SSIM (Wang et al. 2004 settings) against the sharp original; means per degradation and over
all four; gain = method - blurred input.

The module also owns the second protocol, the hold-out validation that every training run logs:
``fixed_validation_set`` degrades crops of never-trained photos with the same four kinds (a procedural
camera-shake kernel in place of Levin's, which stay evaluation-only), and ``validate`` scores a
network on it. Training imports this module; nothing here imports training.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sharpkd.data import PatchSampler, Photo
from sharpkd.degrade import (
    PROTOCOL_DEGRADATIONS,
    PROTOCOL_VERSION,
    gaussian_kernel,
    load_levin_kernels,
    make_kernel,
    protocol_degrade,
    protocol_kernel,
)
from sharpkd.metrics import batch_psnr, psnr, ssim

DEGRADATIONS = PROTOCOL_DEGRADATIONS
__all__ = ["DEGRADATIONS", "PROTOCOL_VERSION", "fixed_validation_set", "gains_by_kind", "load_levin_kernels",
           "protocol_degrade", "protocol_kernel", "results_table", "run_benchmark", "to_markdown", "unsharp",
           "validate", "wiener_oracle"]
WIENER_BALANCE = 0.001  # chosen on training-pool photos, not on Kodak (benchmarks/wiener_balance.py in d7a2186)


def load_eval_images(folder: str | Path, limit: int = 0) -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"evaluation folder not found: {folder}")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in {".png", ".bmp", ".tif", ".tiff", ".jpg"})
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    if limit:
        files = files[:limit]
    return [(f.name, np.asarray(Image.open(f).convert("RGB"))) for f in files]


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(x, np.float64) * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Classical methods: uint8 blurred image (and, for the oracle, the kernel) -> uint8
# --------------------------------------------------------------------------------------------
def unsharp(blurred: np.ndarray, kernel: np.ndarray | None = None) -> np.ndarray:
    from skimage.filters import unsharp_mask

    return to_uint8(unsharp_mask(blurred, radius=1, amount=1, channel_axis=2))


def wiener_oracle(blurred: np.ndarray, kernel: np.ndarray, balance: float = WIENER_BALANCE) -> np.ndarray:
    """Non-blind Wiener deconvolution (scikit-image, Laplacian regulariser) given the true kernel.
    The image is reflect-padded by the kernel size first so the FFT's periodic boundary does not
    ring into the picture."""
    from skimage.restoration import wiener

    x = blurred.astype(np.float64) / 255.0
    p = kernel.shape[0]
    xp = np.pad(x, ((p, p), (p, p), (0, 0)), mode="symmetric")
    out = np.stack([wiener(xp[..., c], kernel, balance, clip=False) for c in range(3)], axis=-1)
    return to_uint8(out[p:-p, p:-p])


CLASSICAL: dict[str, Callable] = {
    "blurred input": lambda b, k: b,
    "unsharp mask (r=1, a=1)": unsharp,
    "Wiener, true kernel (oracle)": wiener_oracle,
}


def parse_model_spec(spec: str) -> tuple[str, int | None]:
    """``teacher@x8`` -> ("teacher", 8): a model with its self-ensemble size; without ``@xN`` None, the
    model's own default for photos (what ``sharpkd sharpen`` gives: 8 copies for the shipped kernel student,
    1 otherwise; ``@x1`` asks for one copy)."""
    name, sep, suffix = spec.rpartition("@x")
    if sep and suffix.isdigit():
        return name, int(suffix)
    return spec, None


def protocol_cases(images: list[tuple[str, np.ndarray]], levin: list[np.ndarray]) -> list[tuple]:
    """Every (image index, degradation index, blurred uint8 image, kernel) of the protocol."""
    cases = []
    for i, (_, sharp) in enumerate(images):
        for j in range(len(DEGRADATIONS)):
            k = protocol_kernel(j, i, levin)
            cases.append((i, j, protocol_degrade(sharp, k, 1000 * j + i), k))
    return cases


def model_method(spec: str, device: str = "cpu", tile: int = 0, backend: str = "torch") -> tuple[str, Callable, dict]:
    """A benchmark row for a model spec (``name`` or ``name@xN``): its name, a function of (blurred
    uint8, kernel) that ignores the kernel, and what the table says about the model."""
    import torch

    from sharpkd.checkpoint import count_params, load_model, macs_per_pixel, read_info, resolve
    from sharpkd.infer import Sharpener

    m, ensemble = parse_model_spec(spec)
    sh = Sharpener.from_pretrained(m, device=device, tile=tile, backend=backend, ensemble=ensemble)
    ensemble = sh.ensemble
    if isinstance(sh.model, torch.nn.Module):
        torch_model, info = sh.model, read_info(m)  # header only; the weights are loaded once
    elif m.endswith(".onnx"):
        torch_model, info = None, sh.model.info
    else:  # onnx backend for a sharpkd model file: count parameters on the torch weights
        torch_model, info = load_model(m)
    meta = {"arch": info.get("preset", info.get("arch")), "steps": info.get("steps"),
            "distilled": info.get("distilled"), "backend": "onnx" if m.endswith(".onnx") else backend,
            "precision": info.get("precision", "int8" if backend == "onnx-int8" else "fp32"), "ensemble": ensemble}
    if torch_model is not None:
        meta.update(params=count_params(torch_model), macs_per_pixel=ensemble * macs_per_pixel(torch_model))
    meta["file_sha256"] = file_sha256(Path(m) if m.endswith(".onnx") else resolve(m))

    def fn(b: np.ndarray, k: np.ndarray) -> np.ndarray:
        out = to_uint8(sh.sharpen_array(b.astype(np.float32) / 255.0))
        fn.route = sh.last_estimates[0].route if sh.last_estimates else None  # blind models: what it did
        return out

    return spec, fn, meta


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Journal:
    """Per-photo records of one benchmark row, written as each photo is scored (a JSON header line, then
    one line per case), so an interrupted run can go on where it stopped (``sharpkd eval --resume``).
    Records are reused only under the same header: method, model file, data, photos, protocol, settings."""

    def __init__(self, path: Path | None, header: dict, resume: bool):
        self.path, self.done = path, {}
        if path is None:
            return
        if resume and path.is_file():
            lines = path.read_text().splitlines()
            if lines and json.loads(lines[0]) == header:
                for line in lines[1:]:
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # the last line of a run that was stopped while writing
                        break
                    self.done[(r["i"], r["j"])] = r
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:  # rewritten: the header and the records kept
            f.writelines(json.dumps(x) + "\n" for x in [header, *self.done.values()])

    def add(self, record: dict) -> None:
        self.done[(record["i"], record["j"])] = record
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def journal_name(method: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._@-]+", "_", method).strip("._") + ".jsonl"


def score_method(name: str, fn: Callable, meta: dict, images: list, cases: list, vgg_distance: bool = False,
                 bar=None, journal: Journal | None = None) -> dict:
    """One row of the table: mean PSNR/SSIM per degradation (and per image), time per image. Cases already
    in ``journal`` are taken from it; new ones are added to it as they are scored."""
    per = {d: {"psnr": [], "ssim": [], "vgg": []} for d in DEGRADATIONS}
    routes: dict[str, list] = {d: [] for d in DEGRADATIONS}
    times: dict[str, list] = {d: [] for d in DEGRADATIONS}
    journal = journal or Journal(None, {}, False)
    seconds = 0.0
    for i, j, blurred, k in cases:
        rec = journal.done.get((i, j))
        if rec is None:
            rec = score_case(name, fn, blurred, k, images[i][1], vgg_distance)
            journal.add({"i": i, "j": j, **rec})
        seconds += rec["seconds"]
        times[DEGRADATIONS[j]].append(round(rec["seconds"], 3))
        routes[DEGRADATIONS[j]].append(rec["route"])
        for key in ("psnr", "ssim", "vgg"):
            if key in rec:
                per[DEGRADATIONS[j]][key].append(rec[key])
        if bar is not None:
            bar.update(1)
    row = {"method": name, **meta,
           "per_degradation": {d: {"psnr": float(np.mean(v["psnr"])), "ssim": float(np.mean(v["ssim"]))}
                               for d, v in per.items()},
           "per_image_psnr": {d: v["psnr"] for d, v in per.items()},
           "seconds_per_image": seconds / len(cases),
           "megapixels_per_s": np.mean([b.shape[0] * b.shape[1] for _, _, b, _ in cases]) / 1e6
           / max(seconds / len(cases), 1e-9)}
    if any(r is not None for v in routes.values() for r in v):  # blind models: the route each photo took
        row["per_image_route"] = routes  # and its time, which depends on the route
        row["per_image_seconds"] = times
    row["mean_psnr"] = float(np.mean([row["per_degradation"][d]["psnr"] for d in DEGRADATIONS]))
    row["mean_ssim"] = float(np.mean([row["per_degradation"][d]["ssim"] for d in DEGRADATIONS]))
    if vgg_distance:
        for d in DEGRADATIONS:
            row["per_degradation"][d]["vgg_distance"] = float(np.mean(per[d]["vgg"]))
        row["vgg_distance"] = float(np.mean([row["per_degradation"][d]["vgg_distance"] for d in DEGRADATIONS]))
    return row


def score_case(name: str, fn: Callable, blurred: np.ndarray, k: np.ndarray, sharp: np.ndarray,
               vgg_distance: bool) -> dict:
    t = time.perf_counter()
    out = fn(blurred, k)
    rec = {"seconds": time.perf_counter() - t, "route": getattr(fn, "route", None)}
    if out.shape != sharp.shape:
        raise ValueError(f"{name} returned shape {out.shape} for an image of shape {sharp.shape}")
    rec.update(psnr=psnr(sharp, out), ssim=ssim(sharp, out))
    if vgg_distance:
        rec["vgg"] = feature_distance(sharp, out)
    return rec


def run_benchmark(data: str | Path, models: list[str], out_dir: str | Path, kernels: str | Path,
                  limit: int = 0, device: str = "cpu", tile: int = 0, progress: bool = True,
                  classical: bool = True, backend: str = "torch", vgg_distance: bool = False,
                  resume: bool = False) -> dict:
    """Score the classical rows and every model; write results.json and results.md to ``out_dir``.

    ``vgg_distance`` also reports, per row, the VGG16 feature distance to the ground truth (the
    perceptual training loss's measure: mean L1 over relu1_2/relu2_2/relu3_3; lower is closer).
    Every row keeps per-photo records in ``out_dir/journal/`` as it goes; ``resume`` reuses those of an
    interrupted run with the same settings instead of scoring those photos again."""
    from sharpkd.provenance import hardware

    images = load_eval_images(data, limit)
    cases = protocol_cases(images, load_levin_kernels(kernels))
    methods: list[tuple[str, Callable, dict]] = []
    if classical:
        methods += [(n, f, {}) for n, f in CLASSICAL.items()]
    else:
        methods.append(("blurred input", CLASSICAL["blurred input"], {}))
    methods += [model_method(spec, device, tile, backend) for spec in models]
    bar = tqdm(total=len(methods) * len(cases), desc="eval", unit="img", disable=not progress)
    out = Path(out_dir)
    setting = {"data": str(data), "photos": [n for n, _ in images], "kernels": file_sha256(Path(kernels)),
               "protocol_version": PROTOCOL_VERSION, "device": device, "tile": tile, "backend": backend,
               "vgg_distance": vgg_distance}
    rows = []
    for name, fn, meta in methods:
        header = {"method": name, "file_sha256": meta.get("file_sha256"), **setting}
        journal = Journal(out / "journal" / journal_name(name), header, resume)
        rows.append(score_method(name, fn, meta, images, cases, vgg_distance, bar, journal))
    bar.close()
    base = rows[0]["mean_psnr"]
    for r in rows:
        r["gain_db"] = r["mean_psnr"] - base
    result = {"protocol": "shared/BENCHMARK.md", "protocol_version": PROTOCOL_VERSION, "data": str(data),
              "images": len(images), "hardware": hardware(), "device": device, "backend": backend, "rows": rows}
    result["markdown"] = to_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=1))
    (out / "results.md").write_text(result["markdown"] + "\n")
    return result


def feature_distance(sharp: np.ndarray, out: np.ndarray) -> float:
    """VGG16 feature distance between two uint8 HxWx3 images (``losses.perceptual``; lower is closer)."""
    import torch

    from sharpkd.losses import perceptual

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None] / 255.0  # astype copies

    with torch.no_grad():
        return float(perceptual(t(out), t(sharp)))


def results_table(rows: list[dict], speed: bool = True) -> list[str]:
    """The markdown table of benchmark rows (the one renderer: results.md, README, model cards).
    The first row is the reference of the gain column; ``speed`` adds parameters, MACs and MP/s."""
    vgg = all("vgg_distance" in r for r in rows)
    head = ("| method | " + " | ".join(DEGRADATIONS) + " | mean PSNR / SSIM | gain (dB) | "
            + ("VGG dist | " if vgg else "") + ("params | MACs/px | MP/s |" if speed else ""))
    lines = [head, "|" + "---|" * (len(DEGRADATIONS) + 3 + vgg + 3 * speed)]
    for r in rows:
        cells = [f"{r['per_degradation'][d]['psnr']:.2f} / {r['per_degradation'][d]['ssim']:.4f}" for d in DEGRADATIONS]
        line = (f"| {r['method']} | " + " | ".join(cells)
                + f" | {r['mean_psnr']:.2f} / {r['mean_ssim']:.4f} | {r['gain_db']:+.2f}"
                + (f" | {r['vgg_distance']:.2f}" if vgg else ""))
        if speed:
            params = f"{r['params']:,}" if "params" in r else "-"
            macs = f"{r['macs_per_pixel']:,.0f}" if "macs_per_pixel" in r else "-"
            line += f" | {params} | {macs} | {'-' if r is rows[0] else format(r['megapixels_per_s'], '.2f')}"
        lines.append(line + " |")
    return lines


def to_markdown(result: dict) -> str:
    return "\n".join([f"Kodak-protocol (BENCHMARK.md version {result.get('protocol_version', 1)}) results on "
                      f"{result['images']} images ({result['data']}); PSNR (dB) / SSIM.",
                      f"Throughput: {result['device']} ({result.get('backend', 'torch')} backend; .onnx rows: "
                      f"ONNX Runtime), {result['hardware']}.", "", *results_table(result["rows"])])


# ---- the hold-out validation that training logs: the protocol's four kinds on never-trained photos ----
def fixed_validation_set(photos: Sequence[Photo], crops_per_photo: int = 2, crop: int = 192,
                         seed: int = 12345, with_kernels: bool = False):
    """A fixed (blurred, sharp) hold-out set that mirrors the benchmark protocol on photos that are
    never trained on: each crop is degraded by Gaussian sigma = 1, 2, 3 and by one procedural motion
    kernel (the Levin kernels stay evaluation-only), with 1/255 noise and 8-bit rounding.
    ``with_kernels`` also returns the kernel of each item (a list of 2-D arrays of varying size)."""
    rng = np.random.default_rng(seed)
    sampler = PatchSampler(photos, crop, seed=seed, tries=4)
    gaussians = [gaussian_kernel(s) for s in (1.0, 2.0, 3.0)]
    blurred, sharp, used = [], [], []
    for n in range(crops_per_photo * len(photos)):
        patch = np.ascontiguousarray(sampler.random_crop(photos[n % len(photos)].pixels))
        kernels = gaussians + [make_kernel("motion", length=float(rng.uniform(8, 25)), seed=int(rng.integers(1 << 30)),
                                   size=27)]
        for j, k in enumerate(kernels):
            blurred.append(protocol_degrade(patch, k, seed + 1000 * j + n))
            sharp.append(patch)
            used.append(k)

    def to_tensor(arrs: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrs).astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()

    if with_kernels:
        return to_tensor(blurred), to_tensor(sharp), used
    return to_tensor(blurred), to_tensor(sharp)


@torch.inference_mode()
def validate(model: torch.nn.Module, blurred: torch.Tensor, sharp: torch.Tensor, chunk: int = 8,
             per_image: bool = False) -> float | torch.Tensor:
    """Mean PSNR of the model's 8-bit output over the validation set (or the per-image PSNRs)."""
    model.eval()
    scores = []
    for i in range(0, len(blurred), chunk):
        out = model(blurred[i : i + chunk]).clamp(0, 1)
        out = torch.round(out * 255) / 255  # score what would be saved to disk
        scores.append(batch_psnr(out, sharp[i : i + chunk]))
    model.train()
    scores = torch.cat(scores)
    return scores if per_image else float(scores.mean())


def gains_by_kind(out_psnr: torch.Tensor, blurred_psnr: torch.Tensor) -> dict[str, float]:
    """Mean gain per degradation of the validation set, rounded for the log."""
    gain = out_psnr - blurred_psnr
    return {k: round(float(gain[j :: len(DEGRADATIONS)].mean()), 3) for j, k in enumerate(DEGRADATIONS)}
