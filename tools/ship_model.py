"""Copy a trained model into the package as a shipped model (and its ONNX export), and write its model card.

    python tools/ship_model.py runs/teacher --name teacher --half
    sharpkd eval --models teacher,... --out docs/eval          # benchmark the shipped file itself
    python tools/ship_model.py runs/teacher --name teacher --card-only --eval docs/eval/results.json

The card is built from the provenance stored in the model file (command, steps, data, wall time,
hardware) and, when given, the model's row of a ``sharpkd eval`` results.json.
"""

import argparse
import json
from pathlib import Path

from sharpkd.checkpoint import SHIPPED, WEIGHTS_DIR, count_params, load_model, macs_per_pixel, save_model
from sharpkd.evaluate import results_table


def card(name: str, model, info: dict, eval_rows: list[dict] | None, protocol_version: int = 1) -> str:
    tc = info.get("train_config", {})
    patches, feat = f"{tc.get('patch_size')}^2 patches", tc.get("w_kd_feat")
    if tc.get("kd_cache"):  # the batches came from a label cache: its patches, and no features without a live teacher
        manifest = Path(tc["kd_cache"]) / "labels.json"
        size = json.loads(manifest.read_text()).get("patch") if manifest.exists() else None
        patches = f"{size or '?'}^2 patches from the label cache `{tc['kd_cache']}`"
        feat = feat if tc.get("teacher") else "0 (no live teacher)"
    lines = [f"# Model card: `{name}`", "",
             f"- file: `src/sharpkd/weights/{name}.safetensors` ({info.get('dtype', 'float32')} weights)",
             f"- architecture: `{info['arch']}` preset `{info.get('preset', '?')}`, "
             f"config `{json.dumps(info['config'])}`",
             f"- parameters: {count_params(model):,}; MACs per pixel: {macs_per_pixel(model):,.0f}",
             f"- stage: {info.get('stage')}; distilled: {info.get('distilled')}"
             + (f" from `{info['teacher']}`" if info.get("teacher") else ""),
             (f"- training command: `{info.get('command', '')}`" if info.get("history")
              else f"- training command (latest invocation; see the history below): `{info.get('command', '')}`"),
             *[f"  - steps {h['start_step']}-{h['end_step']} ({h['threads']} threads, {h['device']}): `{h['command']}`"
               for h in info.get("history", [])[1:]],
             *([f"- initialised from `{tc['init']}` (fine-tuning; its own card's history comes before these steps)"]
               if tc.get("init") else []),
             *([f"- weights averaged over {len(info['averaged_from'])} runs: `{info.get('average_command', '')}` "
                "(the training details below are those of the first)"] if info.get("averaged_from") else []),
             f"- steps: {info.get('steps')}; batch {tc.get('batch_size')} x {patches}; "
             f"lr {tc.get('lr')} (warm-up + cosine), EMA {tc.get('ema')}",
             f"- loss weights: reconstruction ({tc.get('recon')}) {tc.get('w_rec')}, "
             f"perceptual {tc.get('w_perceptual')}"
             + (f", distillation output {tc.get('w_kd_out')}, features {feat}" if info.get("distilled") else ""),
             f"- data: {', '.join(info.get('data', []))} (about 10 % of the photos held out for validation)",
             f"- degradations: `{json.dumps(tc.get('degrade', {}))}`",
             f"- wall time: {info.get('wall_time_s', 0) / 60:.1f} min of training on {info.get('hardware')}",
             f"- hold-out validation PSNR: {info.get('val_psnr', float('nan')):.2f} dB "
             f"(blurred input {info.get('val_blurred_psnr', float('nan')):.2f} dB)", ""]
    if eval_rows:
        lines += [f"## Benchmark (Kodak24, `shared/BENCHMARK.md` version {protocol_version}), PSNR dB / SSIM", "",
                  "`sharpkd eval --data ../shared/datasets/eval/kodak24 --models teacher,student,student-nokd "
                  "--out docs/eval` (the shipped file itself)", "", *results_table(eval_rows, speed=False), ""]
    lines += [*info.get("notes", []), "",
              "Intended use: sharpening mildly to moderately blurred photographs (focus, camera shake).",
              "Trained on synthetic degradations; strong real-world blur, heavy noise or compression may be",
              "beyond it.", ""]
    return "\n".join(lines)


def card_kstudent(name: str, model, info: dict, eval_rows: list[dict] | None, protocol_version: int = 2) -> str:
    """The card of a kernel student (sharpkd.distill_kernel): its network's training, and what it uses at run time."""
    dc = info.get("distill_config", {})
    val = info.get("val", {})
    before = info.get("val_before", {})
    lines = [f"# Model card: `{name}`", "",
             f"- file: `src/sharpkd/weights/{name}.safetensors` ({info.get('dtype', 'float32')} weights); ONNX "
             f"exports `{name}.onnx` (fp32) and `{name}-int8.onnx` (INT8) of its network",
             f"- architecture: `kstudent` (sharpkd.models.kstudent), config `{json.dumps(info['config'])}`",
             f"- parameters: {count_params(model):,}; MACs per pixel: {macs_per_pixel(model):,.0f} "
             "(network and the Wiener step's FFTs; the blur estimate is not counted)",
             f"- at run time: the blur estimate of the shipped `{model.config.estimator}` file on a "
             f"{model.config.estimate_side}-px central crop (once per photo, or every N video frames"
             + (f"; where that crop shows no camera shake, on a {model.config.fallback_side}-px crop instead"
                if model.config.fallback_side else "")
             + "), a Wiener "
             f"deconvolution with that kernel (balance {model.config.balance}"
             + (f"; {model.config.round_balance} on the round route" if model.config.round_balance else "")
             + ") where its router deconvolves "
             "(`shake`"
             + (f" when its two estimates agree at least {model.config.min_agreement}"
                if model.config.min_agreement is not None else "")
             + ", `round`), the photo itself elsewhere"
             + ("; on camera shake the guide is the mean of the Wiener deconvolutions with each kernel the estimate "
                "carries (the refined kernel, the L0 kernel and the second estimate)"
                if model.config.guide_average else "")
             + "; then the network"
             + (f", {model.config.passes} passes on deconvolved photos (each later pass guided by the previous "
                f"output corrected towards the photo: Wiener weight {model.config.refine_balance}, damping "
                f"{model.config.refine_damping} for camera shake; {model.config.round_refine_balance} and "
                f"{model.config.round_refine_damping} on the round route)" if model.config.passes > 1 else "")
             + (f"; photos average {model.config.photo_ensemble} flipped copies of photo and guide by default "
                "(video: one)" if model.config.photo_ensemble > 1 else ""),
             f"- stage: {info.get('stage')}; distilled: {info.get('distilled')}"
             + (f" from `{info['teacher']}`" if info.get("distilled") else ""),
             *[f"- earlier training, continued by the command below: `{e['command']}` ({e['steps']} steps from "
               f"`{e['init']}`, {e['wall_time_s'] / 60:.1f} min on {e['hardware']}; hold-out gain with the guide "
               + ", ".join(f"{k} {v['guide']:+.2f}" for k, v in (e.get("val") or {}).items()) + ")"
               + "".join(f"; then `{c}`" for c in e.get("settings", []))
               for e in info.get("earlier", [])],
             f"- training command: `{info.get('command', '')}`",
             (f"- initialised from `{info.get('init')}`, the kernel student above (its weights and run-time settings)"
              if info.get("earlier") else
              f"- initialised from `{info.get('init')}` (its weights, zeros for the guide's three input channels)"),
             f"- steps: {info.get('steps')}; batch {dc.get('batch')} x {dc.get('patch')}^2 windows of "
             f"{info.get('train_cases')} bank crops ({dc.get('crop')} px; camera shake and Gaussian, each with "
             f"the kernel the teacher's route estimates); lr {dc.get('lr')} (cosine); "
             f"{dc.get('no_kernel_share')} of the windows without a kernel",
             f"- loss weights: L1 to the ground truth {dc.get('w_rec')}, distillation (L1 to the teacher's "
             f"deconvolution, windows with a kernel) {dc.get('w_kd')}, VGG16 perceptual {dc.get('w_perceptual')} "
             f"({dc.get('perceptual_taps')} layers, every {dc.get('perceptual_every')}th step)",
             f"- data: {', '.join(info.get('data', []))} (training pool; the hold-out photos make the "
             f"{info.get('val_cases')} validation crops)",
             f"- wall time: {info.get('wall_time_s', 0) / 60:.1f} min of training on {info.get('hardware')}",
             "- hold-out validation, gain with the guide (dB): "
             + ", ".join(f"{k} {before.get(k, {}).get('guide', float('nan')):+.2f} -> {v['guide']:+.2f}"
                         for k, v in val.items()),
             *[f"- run-time setting changed after training (weights unchanged): `{h['command']}`"
               for h in info.get("settings_history", [])], ""]
    if eval_rows:
        lines += [f"## Benchmark (Kodak24, `shared/BENCHMARK.md` version {protocol_version}), PSNR dB / SSIM", "",
                  "`sharpkd eval --data ../shared/datasets/eval/kodak24 --models kstudent,kstudent-nokd,"
                  "kstudent@x1,kstudent-nokd@x1 --out docs/eval/kstudent-2pass/shipped` (the shipped files "
                  "themselves; a plain name is the photo default, `@x1` one copy)", "",
                  *results_table(eval_rows, speed=False), ""]
    lines += [*info.get("notes", []), "",
              "Intended use: photographs with camera shake or defocus, when the teacher is too slow. The estimate",
              "takes seconds; where it is not trusted the model acts as a plain student. Trained on synthetic",
              "blur; a wrong kernel estimate can leave ringing.", ""]
    return "\n".join(lines)


def fp16_check(full, half, info: dict) -> float:
    """Hold-out PSNR of the float32 model minus that of the fp16-stored one (dB)."""
    from sharpkd.data import load_photos, skimage_photos, split_holdout
    from sharpkd.evaluate import fixed_validation_set, validate

    tc = info.get("train_config", {})
    photos = load_photos(tc["data"]) if tc.get("data") else skimage_photos()
    _, val = split_holdout(photos, tc.get("val_fraction", 0.1))
    blurred, sharp = fixed_validation_set(val, tc.get("val_crops_per_photo", 2), tc.get("val_crop", 192))
    a, b = validate(full, blurred, sharp), validate(half, blurred, sharp)
    print(f"hold-out PSNR: float32 {a:.3f} dB, fp16 weights {b:.3f} dB")
    return a - b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="training run folder or model file")
    ap.add_argument("--name", required=True, choices=sorted(SHIPPED))
    ap.add_argument("--half", action="store_true", help="store fp16 weights")
    ap.add_argument("--eval", type=Path, help="results.json of sharpkd eval, for the benchmark table")
    ap.add_argument("--card-only", action="store_true", help="only (re)write the model card")
    ap.add_argument("--note", action="append", default=[], help="a line to add to the card (repeatable)")
    args = ap.parse_args()
    dest = WEIGHTS_DIR / f"{args.name}.safetensors"
    if not args.card_only:
        model, info = load_model(args.run)
        info["dtype"] = "float16" if args.half else "float32"
        info["notes"] = args.note
        save_model(dest, model, info, half=args.half)
        if args.half and info["arch"] == "kstudent":
            raise SystemExit("kernel students are shipped float32 (the fp16 check runs a plain student)")
        if args.half:
            drop = fp16_check(model, load_model(dest)[0], info)
            info["fp16_holdout_psnr_drop_db"] = round(drop, 4)
            if drop > 0.02:
                save_model(dest, model, {**info, "dtype": "float32"})
                print(f"fp16 costs {drop:.3f} dB on the hold-out set: shipped float32 instead")
            else:
                save_model(dest, model, info, half=True)
        print(f"wrote {dest}")
        if args.name in ("student", "teacher-net", "kstudent"):  # keep the shipped ONNX export in step
            from sharpkd.export import export_onnx

            shipped, shipped_info = load_model(dest)
            onnx_path = export_onnx(shipped, dest.with_suffix(".onnx"), shipped_info)
            print(f"wrote {onnx_path}")
            if args.name.startswith("student") or shipped_info["arch"] == "kstudent":  # and its INT8 version,
                # calibrated on the training pool
                from sharpkd.export import calibration_inputs, export_int8_model

                cal = calibration_inputs(["../shared/datasets/train"], 32)
                if shipped_info["arch"] == "kstudent":
                    from sharpkd.export import guided_calibration

                    cal = guided_calibration(cal)
                int8_path = dest.with_name(args.name + "-int8.onnx")
                print(f"wrote {export_int8_model(shipped, int8_path, cal, shipped_info)}")
    model, info = load_model(dest)
    if args.card_only and args.note:  # notes given now replace the ones stored at shipping
        info["notes"] = args.note
    rows, version = None, 1
    if args.eval:
        data = json.loads(args.eval.read_text())
        version = data.get("protocol_version", 1)
        # the reference rows (no parameters, not an exported file) and this model's own row
        rows = [r for r in data["rows"]
                if (not r.get("params") and not r["method"].endswith(".onnx"))
                or r["method"] in (args.name, str(dest), f"{args.name}@x1")]
    write = card_kstudent if info["arch"] == "kstudent" else card
    (WEIGHTS_DIR / f"{args.name}.md").write_text(write(args.name, model, info, rows, version))
    print(f"wrote {WEIGHTS_DIR / (args.name + '.md')}")


if __name__ == "__main__":
    main()
