"""ONNX export (fp32) and static INT8 quantisation.

``export_onnx`` writes a single self-contained ``.onnx`` file (opset 18) with a dynamic batch,
height and width; height and width must be multiples of the network's ``multiple``, which is stored
in the file's metadata together with the model description, so that
:class:`~sharpkd.backends.OnnxBackend` (and the :class:`~sharpkd.infer.Sharpener` that pads for it)
needs nothing but the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from sharpkd.backends import ONNX_INPUT as INPUT
from sharpkd.backends import ONNX_OUTPUT as OUTPUT
from sharpkd.checkpoint import config_to_dict

OPSET = 18


def export_onnx(model: nn.Module, path: str | Path, info: dict | None = None, target: str | None = "fp32") -> Path:
    """Export ``model`` (float32, eval mode) to ``path``; returns the path. A kernel student is
    exported as its network (:class:`~sharpkd.models.kstudent.GuidedNet`: photo and guide, six channels).
    ``target``: the precision the file will run at; a student is traced in the graph form that is
    fastest there (:func:`sharpkd.models.export_forms.export_graph`; ``int8`` for a file that
    :func:`export_int8` will quantise; None: as written)."""
    import onnx

    from sharpkd.models.export_forms import ExportStudent, export_graph
    from sharpkd.models.kstudent import GuidedNet, KernelStudent

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, KernelStudent):
        model = GuidedNet(model)
    model = export_graph(model.float().eval().cpu(), target)
    graph = target if isinstance(model, ExportStudent) else "as written"
    m = int(getattr(model.config, "multiple", 1))
    # an example batch of 2: with 1 the tracer takes the batch size for a constant wherever a tensor
    # is reshaped (the int8 form's folds), and the file would only take single images
    c = int(getattr(model, "input_channels", 3))
    nhwc = getattr(model, "channels_last_io", False)  # the frame form: (B, H, W, 4)
    x = torch.rand(2, 4 * m, 6 * m, c) if nhwc else torch.rand(2, c, 4 * m, 6 * m)
    dims = {"x": {0: torch.export.Dim("batch", max=1024), 1 + (not nhwc): torch.export.Dim.DYNAMIC,
                  2 + (not nhwc): torch.export.Dim.DYNAMIC}}
    # the exporter reports its progress on stdout and warns about its own internals (and about
    # torchvision, which sharpkd does not use): keep all of that quiet
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), input_names=[INPUT], output_names=[OUTPUT], dynamo=True,
                                    dynamic_shapes=dims, opset_version=OPSET, external_data=False, verbose=False)
    proto = program.model_proto
    meta = {"multiple": m, "config": config_to_dict(model.config), **(info or {}), "input_channels": c,
            "graph": graph}
    entry = proto.metadata_props.add()
    entry.key, entry.value = "sharpkd", json.dumps(meta)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, path)
    return path


def calibration_inputs(data: list[str] | None = None, count: int = 32, size: int = 128, seed: int = 0) -> np.ndarray:
    """Blurred training-pool patches, (count, 3, size, size) float32, for INT8 calibration.

    They are degraded exactly like training patches, so the activation ranges seen during
    calibration are those of real inputs. ``data``: photo folders (default: the scikit-image photos).
    """
    from sharpkd.data import PatchSampler, load_photos, skimage_photos, split_holdout
    from sharpkd.degrade import DegradeConfig

    photos = load_photos(data) if data else skimage_photos()
    train, _ = split_holdout(photos)  # never calibrate on the hold-out photos
    sampler = PatchSampler(train or photos, size, seed=seed)
    blurred, _ = sampler.batch(count, DegradeConfig())
    return blurred.numpy().astype(np.float32)


def guided_calibration(blurred: np.ndarray, seed: int = 0) -> np.ndarray:
    """Six-channel calibration inputs for a kernel student: each patch with its guide, a Wiener
    deconvolution with a Gaussian of random width (0.5-3 px, what the round route hands it) for
    two in three patches and the patch itself (the "no kernel" case) for the rest."""
    from sharpkd.deblur.solve import wiener_deconvolve
    from sharpkd.degrade import gaussian_kernel

    rng = np.random.default_rng(seed)
    out = []
    for i, patch in enumerate(torch.from_numpy(blurred)):
        guide = patch[None] if i % 3 == 2 else wiener_deconvolve(patch[None], gaussian_kernel(rng.uniform(0.5, 3)),
                                                                 1e-2)
        out.append(torch.cat([patch[None], guide], dim=1))
    return torch.cat(out).numpy().astype(np.float32)


def _shapes_from_quantised(graph) -> None:
    """Point every ``Shape`` node that reads a dequantised tensor at the quantised one (same shape):
    otherwise ONNX Runtime keeps a full-size DequantizeLinear alive only to read its shape."""
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        src = producer.get(node.input[0]) if node.op_type == "Shape" else None
        if src is not None and src.op_type == "DequantizeLinear":
            node.input[0] = src.input[0]


def export_int8_model(model: nn.Module, path: str | Path, calibration: np.ndarray, info: dict | None = None,
                      reduce_range: bool = True) -> Path:
    """``model`` exported in its int8 graph form and quantised (:func:`export_int8`) to ``path``. A plain
    student gets the frame form: RGBA bytes in and out (:func:`_frame_io`), which
    :class:`~sharpkd.backends.OnnxBackend` also runs on float images."""
    import tempfile

    from sharpkd.models.export_forms import ExportStudent, export_graph

    frame = isinstance(export_graph(model, "frame"), ExportStudent)  # a plain student (not a kernel student)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", info, target="frame" if frame else "int8")
        if not frame:
            return export_int8(fp32, path, calibration, reduce_range=reduce_range)
        rgba = np.concatenate([calibration, np.zeros_like(calibration[:, :1])], 1).transpose(0, 2, 3, 1)
        return export_int8(fp32, path, np.ascontiguousarray(rgba), frame_io=True, reduce_range=reduce_range)


def _frame_io(graph) -> None:
    """Make the graph's input and output the bytes of RGBA frames: quantised with ``scale`` 1/255 and zero
    point 0, the input's QuantizeLinear and the output's DequantizeLinear are the identity on bytes,
    so they are removed and the graph reads and writes uint8 directly."""
    from onnx import TensorProto

    inp, out = graph.input[0].name, graph.output[0].name
    quant = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == inp)
    dequant = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] == out)
    for node in graph.node:
        node.input[:] = [inp if v == quant.output[0] else v for v in node.input]
        node.output[:] = [out if v == dequant.input[0] else v for v in node.output]
    graph.node.remove(quant)
    graph.node.remove(dequant)
    graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    graph.output[0].type.tensor_type.elem_type = TensorProto.UINT8


def export_int8(fp32_path: str | Path, path: str | Path, calibration: np.ndarray, per_channel: bool = True,
                frame_io: bool = False, reduce_range: bool = True) -> Path:
    """Statically quantise an exported fp32 model with ONNX Runtime's tools (QDQ format, uint8
    activations and int8 weights, the pairing ORT recommends for x86 CPUs), calibrated (min/max)
    on ``calibration`` images. The sharpkd metadata is carried over with ``precision: int8``.
    ``frame_io``: the file is the frame form (NHWC RGBA), and reads and writes bytes (:func:`_frame_io`).
    ``reduce_range`` (default): 7-bit weights, so that the uint8 x int8 products of CPUs without VNNI (AVX2's
    VPMADDUBSW sums pairs into 16 bits) cannot saturate; ONNX Runtime's documented remedy for non-VNNI CPUs."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, path = Path(fp32_path), Path(path)
    src = onnx.load(str(fp32_path))
    meta = json.loads({p.key: p.value for p in src.metadata_props}.get("sharpkd", "{}"))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {INPUT: x}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            byte = {"scale": np.array(1 / 255, np.float32), "zero_point": np.array(0, np.uint8)}
            overrides = {"TensorQuantOverrides": {INPUT: [byte], OUTPUT: [byte]}} if frame_io else {}
            quantize_static(str(pre), str(Path(tmp) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            reduce_range=reduce_range, extra_options=overrides)
        q = onnx.load(str(Path(tmp) / "q.onnx"))
    _shapes_from_quantised(q.graph)
    if frame_io:
        _frame_io(q.graph)
    del q.metadata_props[:]
    entry = q.metadata_props.add()
    meta = {**meta, "precision": "int8", **({"io": "rgba8"} if frame_io else {}),
            "calibration_images": int(len(calibration)), "reduce_range": bool(reduce_range)}
    entry.key, entry.value = "sharpkd", json.dumps(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = path.with_name(path.name + ".tmp")
    onnx.save_model(q, str(tmp_out))
    os.replace(tmp_out, path)
    return path
