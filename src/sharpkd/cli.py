"""The ``sharpkd`` command line. Thin: parse arguments, call the library, print."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from sharpkd.backends import BACKENDS
from sharpkd.bench import METHODS
from sharpkd.degrade import BLUR_KINDS
from sharpkd.imageio import MAX_PIXELS
from sharpkd.infer import ENSEMBLE_SIZES
from sharpkd.models import PRESETS

OUTPUT_FORMATS = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp", "tiff": ".tif", "bmp": ".bmp"}
EXIT_USAGE = 2
EXIT_FAIL = 1


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


# --------------------------------------------------------------------------------------------
# sharpen
# --------------------------------------------------------------------------------------------
def cmd_sharpen(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from sharpkd.data import IMAGE_EXTENSIONS
    from sharpkd.imageio import ImageReadError, read_image, write_image
    from sharpkd.infer import Sharpener

    if not 1 <= args.quality <= 100:
        raise UserError("--quality must be between 1 and 100")
    if not args.max_megapixels > 0:
        raise UserError("--max-megapixels must be positive")
    ext = OUTPUT_FORMATS.get(args.format or "")
    jobs = plan_outputs(args.inputs, args.output, IMAGE_EXTENSIONS, recursive=args.recursive, extension=ext)
    todo = [(s, d) for s, d in jobs if args.overwrite or not d.exists()]
    skipped = len(jobs) - len(todo)
    try:
        sharpener = Sharpener.from_pretrained(args.model, device=args.device, tile=args.tile, backend=args.backend,
                                              ensemble=args.ensemble)
    except ValueError as e:
        raise UserError(str(e)) from e
    if args.save_kernel and not sharpener.blind:
        raise UserError("--save-kernel needs a model that estimates the blur (--model teacher or kstudent), "
                        f"not {args.model}")
    failed: list[str] = []
    for src, dst in tqdm(todo, desc="sharpen", unit="img", disable=len(todo) < 2 or args.quiet):
        try:
            img = read_image(src, first_frame=args.first_frame, max_pixels=int(args.max_megapixels * 1e6))
            if args.save_kernel:
                out = sharpen_saving_kernel(sharpener, img, Path(args.save_kernel), dst.name)
            else:
                out = sharpener.sharpen_image(img)
            del img  # a 24 MP input is 288 MB as float32: free it before encoding the output
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_image(dst, out, quality=args.quality)
        except (ImageReadError, OSError, ValueError) as e:  # report, keep going with the others
            msg = str(e) if str(src) in str(e) else f"{src}: {e}"
            print(f"error: {msg}", file=sys.stderr)
            failed.append(str(src))
        except MemoryError:
            print(f"error: {src}: out of memory (try a smaller --tile)", file=sys.stderr)
            failed.append(str(src))
    done = len(todo) - len(failed)
    if not args.quiet or failed:
        where = todo[0][1] if len(todo) == 1 else args.output  # name the file when there is one
        parts = [f"sharpened {done} image(s) with {args.model} ({sharpener.backend.kind}) -> {where}"]
        if skipped:
            parts.append(f"skipped {skipped} existing (use --overwrite to redo them)")
        if failed:
            parts.append(f"{len(failed)} failed")
        print("; ".join(parts), file=sys.stderr if failed else sys.stdout)
    return EXIT_FAIL if failed else 0


def sharpen_saving_kernel(sharpener, img, folder: Path, name: str):
    """Sharpen with a blind model and save its blur estimate as ``NAME.kernel.png`` (scaled to its
    peak, 8x enlarged), ``NAME.kernel.npy`` (the kernel itself, float64, sums to 1) and
    ``NAME.kernel.json`` (the route the photo took, the agreement of the two estimates, the noise, and for a
    JPEG file its quantisation step, :func:`sharpkd.imageio.jpeg_step`)."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    from sharpkd.imageio import LoadedImage

    x = torch.from_numpy(np.ascontiguousarray(img.rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    est = sharpener.estimate_blur(x, jpeg_step=img.jpeg_step)
    out = sharpener.sharpen_tensor(x, est)[0].permute(1, 2, 0).numpy()
    k = est[0].kernel
    folder.mkdir(parents=True, exist_ok=True)
    vis = (k / max(float(k.max()), 1e-12) * 255).round().astype(np.uint8)
    Image.fromarray(vis).resize((vis.shape[1] * 8, vis.shape[0] * 8), Image.NEAREST).save(folder / f"{name}.kernel.png")
    np.save(folder / f"{name}.kernel.npy", k)
    e = est[0]
    report = {"route": getattr(e, "route", "shake"), "agreement": round(float(getattr(e, "agreement", 1.0)), 4),
              "noise_255": round(float(e.noise) * 255, 3), "kernel_size": int(k.shape[0]), "jpeg_step": img.jpeg_step}
    (folder / f"{name}.kernel.json").write_text(json.dumps(report) + "\n")
    return LoadedImage(out, img.alpha, img.mode, img.format, dict(img.info), img.jpeg_step)


def plan_outputs(inputs: list[str], output: str, exts: set[str], recursive: bool = False,
                 extension: str | None = None) -> list[tuple[Path, Path]]:
    """Pair every input image with its output path. One input file may go to a file; otherwise
    OUTPUT is a folder: names are kept, and with ``recursive`` the paths below each input folder.
    ``extension`` changes the output format. Refuses to write over any input."""
    files: list[tuple[Path, Path]] = []  # (file, path relative to the output folder)
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted(f for f in it if f.is_file() and f.suffix.lower() in exts)
            if not found:
                raise UserError(f"no images in folder {p}" + ("" if recursive else " (use --recursive for subfolders)"))
            files.extend((f, f.relative_to(p) if recursive else Path(f.name)) for f in found)
        elif p.is_file():
            files.append((p, Path(p.name)))
        elif p.exists():  # a FIFO, a device, a socket: never opened (reading one could block or never end)
            raise UserError(f"{p} is not a regular file or folder")
        else:
            raise UserError(f"no such file or folder: {p}")
    out = Path(output)
    from sharpkd.imageio import FORMATS

    name_max = 255  # bytes per name on Linux, macOS and Windows file systems alike
    too_long = [part for part in out.parts if len(os.fsencode(part)) > name_max]
    if too_long:
        raise UserError(f"output name too long ({len(os.fsencode(too_long[0]))} bytes; at most {name_max} "
                        f"per file or folder name): {too_long[0][:40]}...")

    one_file = len(files) == 1 and Path(inputs[0]).is_file()
    as_folder = out.is_dir() or output.endswith(("/", os.sep))
    if not as_folder and out.suffix:  # a file name: it must be one file, in a format sharpkd writes
        if out.suffix.lower() not in FORMATS:
            raise UserError(f"cannot write {out.suffix} files; give the output one of "
                            f"{', '.join(sorted(FORMATS))}, or a folder")
        if not one_file:
            raise UserError(f"{len(files)} inputs need an output folder, not the file name {out}")
    single_file = one_file and not as_folder and bool(out.suffix)  # no extension: a folder
    if single_file:
        jobs = [(files[0][0], out)]
    else:
        if out.exists() and not out.is_dir():
            raise UserError(f"output {out} is a file, but several inputs need an output folder")

        def target(rel: Path) -> Path:  # formats that cannot be written (GIF, ...) come out as PNG
            return rel.with_suffix(extension or (rel.suffix if rel.suffix.lower() in FORMATS else ".png"))

        jobs = [(f, out / target(rel)) for f, rel in files]
        targets = [d for _, d in jobs]
        dup = sorted({str(d.relative_to(out)) for d in targets if targets.count(d) > 1})
        if dup:
            raise UserError(f"several inputs would be written to the same output(s) {dup}; "
                            "sharpen them separately (or use --recursive to keep folders apart)")
    inputs_resolved = {f.resolve() for f, _ in files}
    for _, dst in jobs:
        if dst.resolve() in inputs_resolved:
            raise UserError(f"refusing to overwrite the input {dst}; choose another output")
    return jobs


# --------------------------------------------------------------------------------------------
# degrade
# --------------------------------------------------------------------------------------------
def cmd_degrade(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from sharpkd.data import IMAGE_EXTENSIONS
    from sharpkd.degrade import degrade_image, make_kernel
    from sharpkd.imageio import ImageReadError, read_image, write_image

    jobs = plan_outputs(args.inputs, args.output, IMAGE_EXTENSIONS)
    try:
        kernel = make_kernel(args.blur, sigma=args.sigma, radius=args.radius, length=args.length, seed=args.seed)
    except ValueError as e:
        raise UserError(str(e)) from e
    if args.noise < 0 or not 0 <= args.jpeg <= 100:
        raise UserError("--noise must be >= 0 and --jpeg a quality between 1 and 100")
    failed = 0
    for i, (src, dst) in enumerate(jobs):
        try:
            img = read_image(src)
        except ImageReadError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        x = torch.from_numpy(np.ascontiguousarray(img.rgb)).permute(2, 0, 1)[None].float()
        y = degrade_image(x, kernel, args.noise, args.jpeg, torch.Generator().manual_seed(args.seed * 100003 + i))
        img.rgb = y[0].permute(1, 2, 0).numpy()
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_image(dst, img)
    print(f"degraded {len(jobs) - failed} image(s) ({args.blur}) -> {args.output}")
    return EXIT_FAIL if failed else 0


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
def parse_blur_mix(text: str) -> dict[str, float]:
    """``gaussian=0.35,motion=0.65`` -> {"gaussian": 0.35, "motion": 0.65} (shares need not sum to 1)."""
    mix: dict[str, float] = {}
    for part in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = part.partition("=")
        if name not in BLUR_KINDS:
            raise UserError(f"--blur-mix: unknown blur kind {name!r} (choose from {', '.join(BLUR_KINDS)})")
        try:
            share = float(value)
        except ValueError:
            raise UserError(f"--blur-mix: {part!r} needs a number, e.g. {name}=0.5") from None
        if share < 0 or not share < float("inf"):
            raise UserError(f"--blur-mix: share of {name} must be a non-negative number")
        mix[name] = share
    if not mix or sum(mix.values()) <= 0:
        raise UserError("--blur-mix: give at least one blur kind with a positive share")
    return mix


def cmd_train(args: argparse.Namespace) -> int:
    from sharpkd.degrade import DegradeConfig
    from sharpkd.train import TrainConfig, train

    mix = parse_blur_mix(args.blur_mix)
    if args.init and not Path(args.init).exists() and args.init not in ("student", "teacher-net", "student-nokd"):
        raise UserError(f"--init: no such model file: {args.init}")
    cfg = TrainConfig(stage=args.stage, arch=args.arch or "", out=args.out, data=args.data or [],
                      teacher=args.teacher or "", distill=not args.no_distill, steps=args.steps,
                      batch_size=args.batch_size, patch_size=args.patch_size, lr=args.lr, seed=args.seed,
                      device=args.device, threads=args.threads, max_minutes=args.max_minutes,
                      val_every=args.val_every, ckpt_every=args.val_every, log_every=args.log_every, ema=args.ema,
                      w_rec=args.w_rec, recon=args.recon, w_perceptual=args.w_perceptual, w_kd_out=args.w_kd_out,
                      perceptual_every=args.perceptual_every, perceptual_taps=args.perceptual_taps,
                      w_kd_feat=args.w_kd_feat, init=args.init or "", kd_extra=args.kd_extra, amp=args.amp,
                      channels_last=args.channels_last, compile=args.compile,
                      kd_extra_data=args.kd_extra_data or [], max_side=args.max_side, kd_cache=args.kd_cache or "",
                      degrade=DegradeConfig(jpeg_prob=args.jpeg_prob, kinds=tuple(mix), kind_probs=tuple(mix.values()),
                                            motion_length_range=tuple(args.motion_length)))
    # on --resume the saved run's config (teacher included) is used, so nothing more is needed here
    if args.stage == "student" and cfg.distill and not cfg.teacher and not cfg.kd_cache and not args.resume:
        raise UserError("train student needs --teacher MODEL or --kd-cache DIR (or --no-distill for the ablation)")
    if cfg.kd_cache and not Path(cfg.kd_cache).is_dir():
        raise UserError(f"--kd-cache: no such folder {cfg.kd_cache} (make it with `sharpkd label`)")
    for d in cfg.data:
        if not Path(d).exists():
            raise UserError(f"no such data folder: {d}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available")
    try:
        path = train(cfg, resume=args.resume, progress=not args.quiet)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise UserError(str(e)) from e
    print(f"model written to {path}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from sharpkd.data import load_photos, skimage_photos, split_holdout
    from sharpkd.degrade import DegradeConfig
    from sharpkd.infer import Sharpener
    from sharpkd.labels import label_photos

    if args.per_photo < 1 or args.patch_size < 16 or args.rounds < 1:
        raise UserError("--per-photo and --rounds must be at least 1 and --patch-size at least 16")
    for d in args.data or []:
        if not Path(d).exists():
            raise UserError(f"no such data folder: {d}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    mix = parse_blur_mix(args.blur_mix)
    photos = load_photos(args.data) if args.data else skimage_photos()
    train_photos, _ = split_holdout(photos)  # the same split training uses: never label the hold-out photos
    try:
        teacher = Sharpener.from_pretrained(args.teacher, tile=0)
        degrade = DegradeConfig(kinds=tuple(mix), kind_probs=tuple(mix.values()))
        res = label_photos(teacher, args.teacher, train_photos, args.out, per_photo=args.per_photo,
                           patch=args.patch_size, degrade=degrade, seed=args.seed, max_side=args.max_side,
                           rounds=args.rounds, progress=not args.quiet)
    except ValueError as e:
        raise UserError(str(e)) from e
    print(f"{res['shards']} of {len(train_photos)} photos labelled by {args.teacher} in {args.out} "
          f"({args.per_photo} patches of {args.patch_size}px each)")
    return 0


# --------------------------------------------------------------------------------------------
# eval / info
# --------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from sharpkd.evaluate import run_benchmark

    models = [m for m in (args.models or "").split(",") if m]
    try:
        res = run_benchmark(args.data, models, out_dir=args.out, kernels=args.kernels, limit=args.limit,
                            device=args.device, tile=args.tile, progress=not args.quiet, backend=args.backend,
                            vgg_distance=args.vgg_distance, resume=args.resume)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e
    print(res["markdown"])
    print(f"wrote {Path(args.out) / 'results.md'} and results.json")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sharpkd.checkpoint import load_model
    from sharpkd.export import export_onnx

    out = Path(args.output)
    if out.suffix != ".onnx":
        raise UserError(f"output {out} should end in .onnx")
    model, info = load_model(args.model)
    if not args.int8:
        path = export_onnx(model, out, info)
        print(f"exported {args.model} to {path} ({path.stat().st_size / 1e6:.1f} MB, ONNX opset 18, dynamic batch/H/W)")
        return 0
    from sharpkd.export import calibration_inputs, export_int8_model

    data = args.calib_data
    if data is None and Path("../shared/datasets/train").is_dir():
        data = ["../shared/datasets/train"]
    for d in data or []:
        if not Path(d).exists():
            raise UserError(f"--calib-data: no such folder {d}")
    if args.calib_patches < 1:
        raise UserError("--calib-patches must be at least 1")
    cal = calibration_inputs(data, args.calib_patches)
    if info["arch"] == "kstudent":
        from sharpkd.export import guided_calibration

        cal = guided_calibration(cal)
    path = export_int8_model(model, out, cal, info)
    source = ", ".join(data) if data else "scikit-image photos"
    print(f"exported {args.model} to {path} ({path.stat().st_size / 1e6:.2f} MB, INT8 QDQ, calibrated on "
          f"{len(cal)} blurred {cal.shape[-1]}px patches of {source})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from sharpkd.bench import METHODS, environment, header, plot, ratios, row_line, run_bench, save_json, split_method

    def known(method: str) -> bool:
        """A shipped method, or a model file / training run folder that exists, with its backend."""
        if method in METHODS:
            return True
        try:
            model, backend = split_method(method)
        except ValueError:
            return False
        return backend != "opencv" and Path(model).exists()

    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = sorted(m for m in methods if not known(m))
    if unknown:
        raise UserError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}, "
                        "or name a model file or run folder that exists: PATH-torch")
    try:
        sizes = tuple(tuple(int(v) for v in r.lower().split("x")) for r in args.resolutions.split(","))
    except ValueError as e:
        raise UserError(f"--resolutions takes WxH,WxH,... ({e})") from e
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # the table is printed row by row as cells are measured (a full run takes minutes)
    print("\n".join(header(environment(args.threads), args.device)), flush=True)

    def started(name: str, w: int, h: int) -> None:
        if not args.quiet:
            print(f"measuring {name} at {w}x{h}...", file=sys.stderr, flush=True)

    res = run_bench(methods, sizes, warmup=args.warmup, max_runs=args.runs, max_seconds=args.max_seconds,
                    device=args.device, threads=args.threads, on_row=lambda r: print(row_line(r), flush=True),
                    on_start=started, passes=args.passes)
    if ratios(res):
        print("\n" + "\n".join(ratios(res)))
    if args.json:
        save_json(res, args.json)
    if args.plot:
        plot(res, args.plot)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from sharpkd.checkpoint import count_params, load_model, macs_per_pixel

    model, info = load_model(args.model)
    print(f"model:          {args.model}")
    print(f"architecture:   {info['arch']} {json.dumps(info['config'])}")
    print(f"parameters:     {count_params(model):,}")
    if info["arch"] == "blind":  # iterative: only the solver's denoiser passes are counted
        print(f"MACs per pixel: {macs_per_pixel(model):,.0f} for the FFDNet passes of the two solver runs on "
              "camera shake (the blur estimates, FFTs and the network route are not counted)")
    elif info["arch"] == "kstudent":
        c = model.config
        print(f"MACs per pixel: {macs_per_pixel(model):,.0f} for the network and the Wiener step's FFTs"
              + (f", {c.passes} passes with their corrections" if c.passes > 1 else "")
              + f" (the blur estimate, once per photo by the {c.estimator} file, is not counted)")
        print(f"photos:         {c.passes} network pass(es), the self-ensemble of {c.photo_ensemble} by default; "
              "video: one pass and one copy per frame unless --passes says otherwise")
    else:
        print(f"MACs per pixel: {macs_per_pixel(model):,.0f}")
    init = (info.get("train_config") or {}).get("init")
    averaged = info.get("averaged_from") or []
    for key in ("stage", "preset", "steps", "wall_time_s", "hardware", "data", "command", "distilled", "teacher",
                "val_psnr", "val_blurred_psnr", "components"):
        if key in info:
            value = info[key]
            if key == "steps" and (init or averaged):  # the file's own run is only the last link of a chain
                value = (f"{value} in the last run" + (f", fine-tuned from {init}" if init else "")
                         + (f"; weights averaged over {len(averaged)} runs" if averaged else "")
                         + " (the whole chain is in the notes below and the model card)")
            if key == "command" and averaged:
                value = f"{info.get('average_command', value)} (averaging; the first run's command: {value})"
            print(f"{key + ':':15s} {value}")
    for note in info.get("notes", []):
        print(f"note:           {note}")
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    import torch

    from sharpkd.backends import fastest_backend
    from sharpkd.infer import Sharpener
    from sharpkd.video import VideoError, live, sharpen_video

    live_mode = args.camera is not None or args.live
    if not live_mode and not (args.input and args.output):
        raise UserError("video needs INPUT -o OUTPUT, or --camera N / --live URL for a live preview")
    if args.camera is not None and args.input:
        raise UserError("give either INPUT or --camera, not both")
    if args.threads < 0 or args.max_frames < 0 or args.estimate_every < 0:
        raise UserError("--threads, --max-frames and --estimate-every must be >= 0")
    if not 1 <= args.passes <= 4:
        raise UserError("--passes must be 1 to 4")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        backend = fastest_backend(args.model, args.device) if args.backend == "auto" else args.backend
        sharpener = Sharpener.from_pretrained(args.model, device=args.device, tile=0, backend=backend,
                                              threads=args.threads, ensemble=1,  # one copy per frame
                                              passes=args.passes)
        if live_mode:
            source = args.camera if args.camera is not None else args.input
            stats = live(sharpener, source, mjpeg_port=args.mjpeg, max_frames=args.max_frames,
                         estimate_every=args.estimate_every)
        else:
            stats = sharpen_video(sharpener, args.input, args.output, overwrite=args.overwrite,
                                  max_frames=args.max_frames, progress=not args.quiet,
                                  estimate_every=args.estimate_every)
    except (VideoError, ValueError) as e:
        raise UserError(str(e)) from e
    where = f" -> {args.output}" if not live_mode else ""
    print(f"{stats.frames} frames of {stats.width}x{stats.height}{where} in {stats.seconds:.1f} s: "
          f"{stats.fps:.1f} FPS achieved ({args.model}, {sharpener.backend.kind}, {torch.get_num_threads()} threads)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from sharpkd.web import WebConfig, serve

    models = tuple(m.strip() for m in args.model.split(",") if m.strip())
    if not models:
        raise UserError("--model: name at least one model")
    if args.workers < 1 or args.queue < 0:
        raise UserError("--workers must be >= 1 and --queue >= 0")
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise UserError("--max-upload-mb and --max-megapixels must be positive")
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a valid port")
    if args.allowed_hosts is None:  # a loopback server answers to loopback names only (DNS rebinding)
        hosts = WebConfig.allowed_hosts if args.host in ("127.0.0.1", "localhost", "::1") else ()
    else:
        hosts = () if args.allowed_hosts.strip() == "*" else tuple(
            h.strip().lower() for h in args.allowed_hosts.split(",") if h.strip())
    cfg = WebConfig(models=models, backend=args.backend, max_upload_mb=args.max_upload_mb,
                    max_megapixels=args.max_megapixels, workers=args.workers, queue=args.queue,
                    allowed_hosts=hosts)
    try:
        serve(cfg, host=args.host, port=args.port)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e
    except OSError as e:  # e.g. the port is taken
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from e
    return 0


# --------------------------------------------------------------------------------------------
def add_sharpen(sub) -> None:
    p = sub.add_parser("sharpen", help="sharpen image files or folders")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    p.add_argument("--model", default="student",
                   help="student (fast), kstudent (the student told the photo's blur: a few seconds per photo, "
                        "handles camera shake), teacher (best, slow: estimates the blur), teacher-net (the "
                        "teacher's network alone), or a model file / run folder")
    p.add_argument("--tile", type=int, default=512, help="tile size in pixels for large images (0: no tiling)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="torch", choices=BACKENDS, help="inference engine")
    p.add_argument("--ensemble", type=int, default=None, choices=ENSEMBLE_SIZES,
                   help="average over N flipped/transposed copies (N times the network's time, slightly better; "
                        "default: the model's own, 8 for kstudent, whose photos wait seconds for their blur "
                        "estimate anyway, 1 otherwise)")
    p.add_argument("-r", "--recursive", action="store_true", help="include subfolders, keeping their relative paths")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist (default: skip them)")
    p.add_argument("--format", choices=list(OUTPUT_FORMATS),
                   help="output format (default: the input's)")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality, 1-100")
    p.add_argument("--first-frame", action="store_true", help="sharpen the first frame of animated images")
    p.add_argument("--max-megapixels", type=float, default=MAX_PIXELS / 1e6,
                   help="refuse images larger than this, from their header before decoding (files from "
                        "others can declare huge sizes in a few bytes)")
    p.add_argument("--save-kernel", metavar="FOLDER",
                   help="teacher or kstudent: also save each photo's estimated blur kernel as NAME.kernel.png "
                        "(and .npy)")
    p.set_defaults(func=cmd_sharpen)


def add_degrade(sub) -> None:
    p = sub.add_parser("degrade", help="blur images with the project's degradation code")
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--blur", default="gaussian", choices=BLUR_KINDS)
    p.add_argument("--sigma", type=float, default=2.0, help="Gaussian sigma in pixels")
    p.add_argument("--radius", type=float, default=3.0, help="defocus disc radius in pixels")
    p.add_argument("--length", type=float, default=15.0, help="motion trajectory length in pixels")
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian noise std, image range [0, 1]")
    p.add_argument("--jpeg", type=int, default=0, metavar="QUALITY", help="also JPEG-compress at this quality")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_degrade)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train the teacher, or distil the student")
    p.add_argument("stage", choices=["teacher", "student"])
    p.add_argument("--data", nargs="+", help="image folders or CIFAR-10 batch folders (default: scikit-image photos)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, model.safetensors)")
    p.add_argument("--arch", choices=sorted(PRESETS), metavar="PRESET",
                   help=f"architecture preset: {', '.join(sorted(PRESETS))} "
                        "(teacher default: nafunet; student default: student)")
    p.add_argument("--teacher", help="teacher model file (student stage)")
    p.add_argument("--no-distill", action="store_true", help="student stage: ground truth only (ablation)")
    p.add_argument("--kd-extra", type=int, default=0,
                   help="student: extra patches per step labelled by the teacher only (no ground truth)")
    p.add_argument("--kd-extra-data", nargs="+", help="photos for those extra patches (default: the training pool)")
    p.add_argument("--kd-cache", metavar="DIR",
                   help="student: train on patches a teacher labelled once (`sharpkd label`): ground truth "
                        "for reconstruction, the cached teacher output for distillation; --teacher is then "
                        "optional (a live network teacher adds feature distillation); with --no-distill the "
                        "same patches with their ground truth only (the ablation's twin)")
    p.add_argument("--max-side", type=int, default=0, metavar="PX",
                   help="reduce training photos larger than this (Lanczos) so that their pixels carry crisp detail "
                        "and they do not dominate the patch draw (0: full size)")
    p.add_argument("--init", help="start from these weights (fine-tuning; fresh optimiser and schedule)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=96)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights (0: off)")
    p.add_argument("--recon", default="charbonnier", choices=["charbonnier", "l1", "psnr"],
                   help="reconstruction loss (psnr: minus the per-image PSNR / 100)")
    p.add_argument("--w-rec", type=float, default=1.0, help="weight of the reconstruction loss (ground truth)")
    p.add_argument("--w-perceptual", type=float, default=0.0, help="weight of the VGG16 perceptual loss")
    p.add_argument("--perceptual-every", type=int, default=1, metavar="K",
                   help="compute the perceptual term on every K-th step only (it dominates a CPU step)")
    p.add_argument("--perceptual-taps", type=int, default=3, choices=[1, 2, 3],
                   help="VGG16 layers compared: 1 relu1_2, 2 adds relu2_2, 3 adds relu3_3 (fewer: cheaper)")
    p.add_argument("--w-kd-out", type=float, default=1.0, help="weight of output distillation")
    p.add_argument("--w-kd-feat", type=float, default=0.1, help="weight of feature distillation")
    p.add_argument("--jpeg-prob", type=float, default=0.0,
                   help="share of training patches saved as JPEGs (quality 60-95) and decoded; with --kd-cache, "
                   "of the cached blurred patches (sharp patch and teacher label stay lossless)")
    p.add_argument("--blur-mix", default="gaussian=0.45,defocus=0.2,motion=0.35",
                   help="share of each blur kind in training, e.g. gaussian=0.35,defocus=0.15,motion=0.5")
    p.add_argument("--motion-length", type=float, nargs=2, default=(3.0, 30.0), metavar=("MIN", "MAX"),
                   help="range of procedural camera-shake trajectory lengths (pixels)")
    p.add_argument("--val-every", type=int, default=250, help="validate and checkpoint every N steps")
    p.add_argument("--log-every", type=int, default=10, help="write a log line every N steps")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (with a checkpoint) after this long")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="CUDA mixed precision")
    p.add_argument("--channels-last", action="store_true", help="CUDA: NHWC memory layout")
    p.add_argument("--compile", action="store_true", help="torch.compile the trained network")
    p.set_defaults(func=cmd_train)


def add_label(sub) -> None:
    p = sub.add_parser("label", help="cache a teacher's outputs on training photos, for distillation")
    p.add_argument("--teacher", default="teacher", help="the model that labels (any sharpkd model)")
    p.add_argument("--data", nargs="+", help="photo folders (default: the scikit-image photos); the hold-out "
                   "split is left out")
    p.add_argument("--out", required=True, help="label folder (resumable: existing shards are kept)")
    p.add_argument("--per-photo", type=int, default=8, help="patches cut from each labelled photo")
    p.add_argument("--rounds", type=int, default=1,
                   help="label every photo this many times, each with another random blur (a folder made with "
                        "fewer rounds is extended)")
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--max-side", type=int, default=768, help="reduce photos to this longer side first (0: keep)")
    p.add_argument("--blur-mix", default="gaussian=0.45,defocus=0.2,motion=0.35",
                   help="share of each blur kind, as for training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch default)")
    p.set_defaults(func=cmd_label)


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="the benchmark protocol of BENCHMARK.md")
    p.add_argument("--data", default="../shared/datasets/eval/kodak24")
    p.add_argument("--kernels", default="../shared/datasets/kernels/levin09.npz")
    p.add_argument("--models", default="",
                   help="comma-separated: student, teacher, model files; NAME@x8 adds the x8 self-ensemble")
    p.add_argument("--out", default="out/eval")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images (quick checks)")
    p.add_argument("--tile", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="inference engine for the models")
    p.add_argument("--vgg-distance", action="store_true",
                   help="also report the VGG16 feature distance to the ground truth (lower is closer)")
    p.add_argument("--resume", action="store_true",
                   help="go on with an interrupted run in --out: photos it already scored with the same models "
                        "and settings are read from --out/journal/ instead of being run again")
    p.set_defaults(func=cmd_eval)


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX")
    p.add_argument("--model", default="student", help="student, kstudent, teacher, or a model file / run folder")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--int8", action="store_true", help="static INT8 quantisation with ONNX Runtime's tools")
    p.add_argument("--calib-data", nargs="+", help="photos for INT8 calibration (default: ../shared/datasets/train "
                   "if present, else the scikit-image photos); the hold-out split is left out")
    p.add_argument("--calib-patches", type=int, default=32, help="calibration patches (128x128, blurred)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.set_defaults(func=cmd_export)


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed table: FPS and MP/s per method and resolution")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated MODEL-BACKEND (backend: {', '.join(BACKENDS)}) or unsharp-opencv; "
                   "MODEL may be a model file or training run folder")
    p.add_argument("--resolutions", default="640x480,1280x720,1920x1080")
    p.add_argument("--runs", type=int, default=20, help="at most this many timed runs per cell")
    p.add_argument("--max-seconds", type=float, default=15.0, help="stop timing a cell after this long (>= 3 runs)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: library default)")
    p.add_argument("--passes", type=int, default=1,
                   help="network passes per frame of a two-pass kernel student (as `sharpkd video --passes`; "
                        "default 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--plot", help="write a PNG plot here")
    p.set_defaults(func=cmd_bench)


def add_video(sub) -> None:
    p = sub.add_parser("video", help="sharpen a video file, or a camera/stream with a live preview")
    p.add_argument("input", nargs="?", help="video file, or a stream URL (rtsp://, http://) with --live")
    p.add_argument("-o", "--output", help="output video (.mp4, .avi, .mkv, .mov); same size and frame rate")
    p.add_argument("--camera", type=int, help="camera index for live sharpening (e.g. 0)")
    p.add_argument("--live", action="store_true", help="treat INPUT as a live stream and preview it")
    p.add_argument("--mjpeg", type=int, default=0, metavar="PORT",
                   help="live: serve the preview as an MJPEG page on 127.0.0.1:PORT (for machines without a display)")
    p.add_argument("--model", default="student",
                   help="student, kstudent (estimates the blur: camera shake), teacher, unsharp, or a model file")
    p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                   help="inference engine (auto: the INT8 export where the model ships one, else torch)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for inference (0: all)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: all)")
    p.add_argument("--estimate-every", type=int, default=300, metavar="N",
                   help="models that estimate the blur (kstudent, teacher): renew the estimate every N frames "
                        "(0: the first frame's for the whole video); it takes seconds, the frames between share it")
    p.add_argument("--passes", type=int, default=1,
                   help="network passes per frame of a two-pass kernel student (kstudent): 1 (default) keeps the "
                        "frame rate, 2 gives the photo quality at about half of it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.set_defaults(func=cmd_video)


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="the web app, under the waitress WSGI server")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default="student,kstudent,teacher,unsharp",
                   help="comma-separated models to offer (student, kstudent, teacher, unsharp, or model files); "
                        "first is default")
    p.add_argument("--workers", type=int, default=1, help="requests computed at once")
    p.add_argument("--queue", type=int, default=4, help="requests that may wait; more get 503 + Retry-After")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload (413 above)")
    p.add_argument("--max-megapixels", type=float, default=40.0, help="largest decoded image (413 above)")
    p.add_argument("--allowed-hosts", metavar="NAMES",
                   help="comma-separated host names the server answers to, or * for any (default: localhost, "
                        "127.0.0.1 and [::1] when listening on loopback, any otherwise)")
    p.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="inference engine for the networks")
    p.set_defaults(func=cmd_serve)


def add_info(sub) -> None:
    p = sub.add_parser("info", help="parameters, MACs/pixel and provenance of a model")
    p.add_argument("--model", default="student")
    p.set_defaults(func=cmd_info)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sharpkd", description="Sharpen blurry photos with a distilled student network.")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (add_sharpen, add_degrade, add_train, add_label, add_eval, add_export, add_bench, add_video, add_serve,
                add_info):
        add(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sharpkd.checkpoint import CheckpointError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return args.func(args)
    except (UserError, CheckpointError) as e:
        print(f"sharpkd: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `sharpkd info | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
