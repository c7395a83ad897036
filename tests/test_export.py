import numpy as np
import pytest
import torch

from sharpkd.checkpoint import CheckpointError, save_model
from sharpkd.cli import main
from sharpkd.export import OnnxRunner, export_onnx
from sharpkd.infer import Sharpener


@pytest.mark.parametrize("name", ["student", "nafunet-s"])
def test_onnx_matches_pytorch_on_odd_sizes(tmp_path, name, perturbed):
    model = perturbed(name)
    runner = OnnxRunner(export_onnx(model, tmp_path / "m.onnx", {"steps": 3}))
    assert runner.multiple == model.config.multiple and runner.info["steps"] == 3
    a = Sharpener(model, tile=0)
    b = Sharpener(runner, tile=0)
    for shape in [(1, 3, 37, 53), (2, 3, 21, 64), (1, 3, 5, 7)]:
        x = torch.rand(*shape)
        assert (a.sharpen_tensor(x) - b.sharpen_tensor(x)).abs().max() <= 1e-4, shape
    # tiled through the same Sharpener as well
    x = torch.rand(1, 3, 150, 131)
    tiled = Sharpener(runner, tile=96, overlap=64).sharpen_tensor(x)
    assert (tiled - a.sharpen_tensor(x)).abs().max() <= 1e-4


def test_shipped_onnx_files_match_shipped_weights():
    for name in ("student", "teacher"):
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
        OnnxRunner(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(CheckpointError, match="not a loadable"):
        OnnxRunner(bad)
