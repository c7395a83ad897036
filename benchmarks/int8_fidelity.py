"""How close a kernel student's INT8 network comes to its fp32 network on this CPU.

INT8 quality depends on the CPU: without VNNI (AVX2 only), ONNX Runtime multiplies uint8 activations by int8
weights in pairs summed into 16 bits, which can saturate when the weights use the full 8-bit range. This
exports the model's network in its int8 graph form (fp32), quantises it as ``sharpkd export --int8`` does, with
and without ``reduce_range`` (7-bit weights), and prints the PSNR of each INT8 output against the fp32 output
on the first ``--inputs`` calibration inputs (training-pool patches with their Wiener guides); with
``--file`` also for an INT8 file already made (e.g. a shipped one).

    python benchmarks/int8_fidelity.py                       # shipped kstudent, 8 inputs
    python benchmarks/int8_fidelity.py --file old-int8.onnx  # and an existing INT8 file
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2)))


def main(argv: list[str] | None = None) -> None:
    from sharpkd.checkpoint import load_model
    from sharpkd.export import calibration_inputs, export_int8_model, export_onnx, guided_calibration

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="kstudent", help="a kernel student (shipped name or file)")
    ap.add_argument("--data", default="../shared/datasets/train", help="calibration photos")
    ap.add_argument("--inputs", type=int, default=8, help="calibration inputs compared")
    ap.add_argument("--file", type=Path, help="an existing INT8 file of the same network, compared too")
    args = ap.parse_args(argv)
    model, info = load_model(args.model)
    if info.get("arch") != "kstudent":
        sys.exit(f"{args.model}: expected a kernel student (its int8 graph takes photo and guide)")
    cal = guided_calibration(calibration_inputs([args.data] if Path(args.data).is_dir() else None, 32))
    x = cal[: args.inputs]
    with tempfile.TemporaryDirectory() as tmp:
        ref = run(export_onnx(model, Path(tmp) / "fp32.onnx", info, target="int8"), x)
        files = {f"reduce_range={rr}": export_int8_model(model, Path(tmp) / f"q{int(rr)}.onnx", cal, info,
                                                         reduce_range=rr) for rr in (False, True)}
        if args.file:
            files[str(args.file)] = args.file
        for label, path in files.items():
            print(f"{label}: PSNR against fp32 {psnr(run(path, x), ref):.2f} dB on {len(x)} inputs")


if __name__ == "__main__":
    main()
