import numpy as np
import pytest
import torch

from sharpkd.backends import OnnxBackend
from sharpkd.checkpoint import CheckpointError, save_model
from sharpkd.cli import main
from sharpkd.export import export_onnx
from sharpkd.infer import Sharpener


@pytest.mark.parametrize("name", ["student", pytest.param("nafunet-s", marks=pytest.mark.slow), "student-w"])
def test_onnx_matches_pytorch_on_odd_sizes(tmp_path, name, perturbed):
    model = perturbed(name)
    runner = OnnxBackend(export_onnx(model, tmp_path / "m.onnx", {"steps": 3}))
    assert runner.multiple == model.config.multiple and runner.info["steps"] == 3
    a = Sharpener(model, tile=0)
    b = Sharpener(runner, tile=0)
    for shape in [(1, 3, 37, 53), (2, 3, 21, 64), (1, 3, 5, 7)]:
        x = torch.rand(*shape)
        assert (a.sharpen_tensor(x) - b.sharpen_tensor(x)).abs().max() <= 1e-4, shape
    # tiled through the same Sharpener as well
    x = torch.rand(1, 3, 150, 131)
    tiled = Sharpener(runner, tile=96, overlap=64).sharpen_tensor(x)
    assert (tiled - Sharpener(model, tile=96, overlap=64).sharpen_tensor(x)).abs().max() <= 1e-4


def test_shipped_onnx_files_match_shipped_weights():
    for name in ("student", "teacher-net"):
        x = torch.rand(1, 3, 41, 67)
        a = Sharpener.from_pretrained(name, tile=0).sharpen_tensor(x)
        b = Sharpener.from_pretrained(name, tile=0, backend="onnx").sharpen_tensor(x)
        assert (a - b).abs().max() <= 1e-4, name


def test_export_cli_and_onnx_backend(tmp_path, photo, capsys, perturbed):
    from PIL import Image

    path = save_model(tmp_path / "s.safetensors", perturbed("student"))
    onnx_path = tmp_path / "s.onnx"
    assert main(["export", "--model", str(path), "-o", str(onnx_path)]) == 0
    assert "exported" in capsys.readouterr().out
    Image.fromarray(photo).save(tmp_path / "in.png")
    for backend, model in (("torch", str(path)), ("onnx", str(onnx_path)), ("onnx", str(path))):
        out = tmp_path / f"out-{backend}-{len(model)}.png"
        assert main(["-q", "sharpen", str(tmp_path / "in.png"), "-o", str(out), "--model", model,
                     "--backend", backend]) == 0
    outs = [np.asarray(Image.open(f)).astype(int) for f in sorted(tmp_path.glob("out-*.png"))]
    assert all(np.abs(o - outs[0]).max() <= 1 for o in outs)
    assert main(["export", "--model", str(path), "-o", str(tmp_path / "x.txt")]) == 2


def test_bad_onnx_files(tmp_path):
    with pytest.raises(CheckpointError, match="no ONNX model"):
        OnnxBackend(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(CheckpointError, match="not a loadable"):
        OnnxBackend(bad)


def test_int8_export_is_close_to_fp32_on_real_blurred_photos(tmp_path, capsys):
    """The shipped student quantised to INT8 (calibrated on training-pool patches) stays close to
    fp32 on blurred real photos it was not calibrated on (an astronaut crop), and keeps the metadata."""
    import skimage.data

    from sharpkd.degrade import blur, gaussian_kernel
    from sharpkd.metrics import batch_psnr

    out = tmp_path / "s8.onnx"
    assert main(["export", "--model", "student", "--int8", "--calib-patches", "8", "-o", str(out)]) == 0
    assert "INT8" in capsys.readouterr().out
    r8 = OnnxBackend(out)
    assert r8.info["precision"] == "int8" and r8.info["calibration_images"] == 8 and r8.multiple == 4
    assert r8.info["reduce_range"] is True
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(out)).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    # 7-bit weights: AVX2's uint8 x int8 pair sums (no VNNI) cannot saturate 16 bits
    assert weights and max(int(abs(w.astype(int)).max()) for w in weights) <= 64
    sharp = torch.from_numpy(skimage.data.astronaut()[100:228, 150:310].copy()).permute(2, 0, 1)[None] / 255.0
    blurred = blur(sharp.float(), gaussian_kernel(1.5))
    a = Sharpener.from_pretrained("student", tile=0).sharpen_tensor(blurred)
    b = Sharpener(r8, tile=0).sharpen_tensor(blurred)
    # INT8 output differs from fp32 by less than the student's own improvement over the input
    assert float(batch_psnr(b, a)) > 40
    assert float(batch_psnr(b, sharp)) > float(batch_psnr(blurred, sharp))
    assert not torch.equal(a, b)  # it really is a different (quantised) network


def test_shipped_int8_backend_and_bad_calibration(tmp_path, capsys):
    sh = Sharpener.from_pretrained("student", tile=0, backend="onnx-int8")
    assert sh.model.info["precision"] == "int8"
    assert sh.sharpen_tensor(torch.rand(1, 3, 19, 23)).shape == (1, 3, 19, 23)
    assert main(["export", "--model", "student", "--int8", "--calib-data", str(tmp_path / "nope"),
                 "-o", str(tmp_path / "x.onnx")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_resolver_declares_kind_and_multiple_and_never_exports(tmp_path):
    from sharpkd.backends import BackendError, TorchBackend, UnsharpMask, resolve

    student = resolve("student")
    assert isinstance(student, TorchBackend) and student.kind == "torch" and student.multiple >= 1
    assert resolve("student", "onnx").kind == "onnx"
    assert resolve("student", "onnx-int8").kind == "onnx-int8"
    assert isinstance(resolve("unsharp", "onnx"), UnsharpMask)  # a classical filter has one engine
    # no shipped INT8 teacher and no ONNX student-nokd: a clear error naming the export command,
    # and nothing written anywhere (loading used to export and calibrate on the fly)
    for name, backend in (("teacher-net", "onnx-int8"), ("student-nokd", "onnx")):
        with pytest.raises(BackendError, match="sharpkd export"):
            resolve(name, backend)
    with pytest.raises(BackendError, match="unknown backend"):
        resolve("student", "tensorrt")
    with pytest.raises(TypeError):
        Sharpener(lambda x: x)  # a bare callable declares neither kind nor size multiple


def test_cli_names_the_backend_and_refuses_missing_exports(tmp_path, photo, capsys):
    from PIL import Image

    Image.fromarray(photo).save(tmp_path / "in.png")
    assert main(["sharpen", str(tmp_path / "in.png"), "-o", str(tmp_path / "a.png"), "--model", "teacher-net",
                 "--backend", "onnx-int8"]) == 2
    err = capsys.readouterr().err
    assert "sharpkd export" in err and "Traceback" not in err
    assert not (tmp_path / "a.png").exists()
    assert main(["sharpen", str(tmp_path / "in.png"), "-o", str(tmp_path / "b.png"), "--backend", "onnx"]) == 0
    assert "student (onnx)" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["student-s", "student-x4", "student-x4r", "kstudent"])
def test_export_forms_compute_the_students_function(tmp_path, name, perturbed):
    """Both graph forms (fp32: strided head; int8: channels-last folds, padded tail) are the student's
    function with re-arranged weights, in PyTorch and once exported (a batch of 2, odd multiples)."""
    from sharpkd.checkpoint import load_model
    from sharpkd.models.export_forms import ExportStudent, export_graph
    from sharpkd.models.kstudent import GuidedNet

    if name == "kstudent":
        model = load_model("kstudent")[0]
        net, channels = GuidedNet(model), 6
    else:
        model = net = perturbed(name)
        channels = 3
    m = net.config.multiple
    x = torch.rand(2, channels, 3 * m, 5 * m)
    with torch.no_grad():
        ref = net(x)
        for target in ("fp32", "int8"):
            form = export_graph(net, target)
            assert isinstance(form, ExportStudent) and form.target == target
            assert (form(x) - ref).abs().max() <= 1e-5, target
        if channels == 3:  # the frame form: NHWC RGBA in and out, the alpha slot ignored
            rgba = torch.cat([x, torch.rand(2, 1, *x.shape[2:])], 1).permute(0, 2, 3, 1)
            out = export_graph(net, "frame")(rgba)[..., :3].permute(0, 3, 1, 2)
            assert (out - ref).abs().max() <= 1e-5
        else:
            assert export_graph(net, "frame") is net
            runner = OnnxBackend(export_onnx(model, tmp_path / f"{target}.onnx", target=target))
            assert runner.info["graph"] == target
            assert (runner(x) - ref).abs().max() <= 1e-5, target
    with pytest.raises(ValueError, match="export target"):
        export_graph(net, "fp16")


def test_students_with_a_wiener_bank_are_exported_as_written(perturbed):
    from sharpkd.models.export_forms import export_graph

    model = perturbed("student-w")
    assert export_graph(model, "int8") is model


def test_int8_frame_graph_is_bytes_in_bytes_out_and_channels_last(tmp_path):
    """What makes the INT8 student fast, checked on the graph ONNX Runtime actually runs: RGBA bytes in
    and out (no QuantizeLinear, DequantizeLinear or DepthToSpace left), one transpose per fold; and the
    frame path gives the same bytes as the float path through the same file."""
    import collections

    import onnx
    import onnxruntime as ort

    from sharpkd.checkpoint import load_model
    from sharpkd.export import calibration_inputs, export_int8_model

    model, info = load_model("student")
    path = export_int8_model(model, tmp_path / "s8.onnx", calibration_inputs(None, 4, 64), info)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node)
    assert ops["QLinearConv"] == 12 and ops["DepthToSpace"] == 0 and ops["Transpose"] <= 3
    assert ops["QuantizeLinear"] == 0 and ops["DequantizeLinear"] == 0

    backend = OnnxBackend(path)
    assert backend.frames and backend.info["io"] == "rgba8" and backend.kind == "onnx-int8"
    frame = np.random.default_rng(0).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)  # padded to 40 x 56
    sharpener = Sharpener(backend, tile=0)
    fast = sharpener.sharpen_frame(frame)
    assert fast.shape == frame.shape and fast.dtype == np.uint8
    via_float = sharpener.sharpen_tensor(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255)
    assert np.array_equal(fast, (via_float[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    # BGR frames (OpenCV's order) come back in BGR
    assert np.array_equal(sharpener.sharpen_frame(frame[..., ::-1].copy(), bgr=True), fast[..., ::-1])
    # and it stays close to the fp32 network
    ref = Sharpener.from_pretrained("student", tile=0).sharpen_frame(frame)
    assert np.abs(ref.astype(int) - fast).mean() < 3


def test_torch_backend_runs_students_channels_last_with_the_same_result(perturbed):
    from sharpkd.backends import TorchBackend

    model = perturbed("student-s")
    backend = TorchBackend(model)
    x = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        y = backend(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert (y - model(x)).abs().max() <= 1e-5
