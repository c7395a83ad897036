"""`sharpkd video` on a short video the test makes: same size, frame count and rate; errors; the pipeline."""

import threading
import urllib.request

import cv2
import numpy as np
import pytest

from sharpkd.cli import main
from sharpkd.metrics import sharpness
from sharpkd.video import _MjpegServer, live, pipeline

W, H, N, FPS = 70, 46, 20, 15.0  # a size that is not a multiple of the student's 4


@pytest.fixture
def clip(tmp_path, photo):
    """20 frames of a blurred real photo crop, panning one pixel per frame (MPEG-4 in .mp4)."""
    import skimage.data

    big = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    path = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    for i in range(N):
        w.write(cv2.GaussianBlur(np.ascontiguousarray(big[150:150 + H, 200 + i:200 + i + W]), (0, 0), 1.5))
    w.release()
    return path


def read_all(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


def test_video_keeps_size_rate_and_frame_count(tmp_path, clip, capsys):
    out = tmp_path / "sharp.avi"
    assert main(["-q", "video", str(clip), "-o", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"{N} frames of {W}x{H}" in printed and "FPS achieved" in printed
    assert "(student, onnx-int8," in printed  # by default the shipped INT8 export: the fastest
    src, fps_in = read_all(clip)
    dst, fps_out = read_all(out)
    assert len(dst) == len(src) == N and fps_out == fps_in == FPS
    assert all(f.shape == (H, W, 3) for f in dst)
    # the frames were sharpened, not copied: more fine detail in every frame
    assert all(sharpness(d / 255.0) > 1.2 * sharpness(s / 255.0) for s, d in zip(src, dst, strict=True))
    assert not list(tmp_path.glob(".*partial*"))


def test_video_onnx_backend_and_max_frames(tmp_path, clip):
    out = tmp_path / "sharp.mp4"
    assert main(["-q", "video", str(clip), "-o", str(out), "--backend", "onnx", "--max-frames", "7"]) == 0
    frames, _ = read_all(out)
    assert len(frames) == 7


def test_video_errors_are_clear_and_files_are_safe(tmp_path, clip, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    assert main(["video", str(junk), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "cannot open video" in capsys.readouterr().err
    assert main(["video", str(tmp_path / "none.mp4"), "-o", str(tmp_path / "o.mp4")]) == 2
    assert main(["video", str(clip), "-o", str(clip)]) == 2  # never over the input
    assert "refusing to overwrite the input" in capsys.readouterr().err
    existing = tmp_path / "keep.avi"
    existing.write_bytes(b"user data")
    assert main(["video", str(clip), "-o", str(existing)]) == 2
    assert existing.read_bytes() == b"user data"
    assert main(["video", str(clip), "-o", str(tmp_path / "o.gif")]) == 2  # no encoder for that
    assert main(["video"]) == 2
    assert not (tmp_path / "o.mp4").exists()


def test_pipeline_keeps_order_and_propagates_errors():
    out = []
    n = pipeline(iter(range(50)), lambda x: x * 2, out.append, depth=2)
    assert n == 50 and out == [2 * i for i in range(50)]

    def boom(x):
        if x == 5:
            raise RuntimeError("frame 5 is bad")
        return x

    with pytest.raises(RuntimeError, match="frame 5"):
        pipeline(iter(range(50)), boom, lambda x: None)

    def bad_writer(x):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        pipeline(iter(range(50)), lambda x: x, bad_writer)


def test_live_preview_as_mjpeg(clip):
    """Live mode without a display: an MJPEG stream on loopback carries JPEG frames."""
    from sharpkd.infer import Sharpener

    server = _MjpegServer(0)
    port = server.httpd.server_address[1]
    got = {}

    def fetch():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            got["type"] = r.headers["Content-Type"]
            got["data"] = r.read(4000)

    t = threading.Thread(target=fetch)
    t.start()
    frame = np.zeros((H, W, 3), np.uint8)
    for _ in range(50):
        server.publish(frame)
        if not t.is_alive():
            break
        t.join(timeout=0.1)
    t.join(timeout=10)
    server.close()
    assert got["type"].startswith("multipart/x-mixed-replace")
    assert b"--frame" in got["data"] and b"\xff\xd8" in got["data"]  # a JPEG start-of-image marker
    # and the live loop itself, on the clip as a stream, side by side
    shown = []
    stats = live(Sharpener.from_pretrained("unsharp", tile=0), str(clip), window=False, mjpeg_port=0,
                 max_frames=5, on_frame=lambda n, fps: shown.append(n))
    assert stats.frames == 5 and shown == [1, 2, 3, 4, 5]


def test_frame_conversions_round_trip_and_swap_channels():
    import torch

    from sharpkd.infer import frame_to_tensor, tensor_to_frame

    frame = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    x = frame_to_tensor(frame, bgr=True)
    assert x.shape == (1, 3, 5, 7) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.equal(x[0, 0], torch.from_numpy(frame[..., 2]).float() / 255)  # BGR in, RGB out
    assert np.array_equal(tensor_to_frame(x, bgr=True), frame)
    assert np.array_equal(tensor_to_frame(frame_to_tensor(frame)), frame)
    with pytest.raises(ValueError, match="uint8 frame"):
        from sharpkd.infer import Sharpener

        Sharpener.from_pretrained("unsharp").sharpen_frame(frame.astype(np.float32))
    # rounded to the nearest level and clipped
    y = torch.tensor([100.49, 100.5, -3.0, 300.0]).reshape(1, 1, 1, 4).expand(1, 3, 1, 4) / 255
    assert tensor_to_frame(y)[0, :, 0].tolist() == [100, 101, 0, 255]


def test_video_default_backend_is_the_fastest_one_the_model_ships(tmp_path, perturbed):
    from sharpkd.backends import fastest_backend
    from sharpkd.checkpoint import save_model

    assert fastest_backend("student") == fastest_backend("kstudent") == "onnx-int8"
    assert fastest_backend("student", device="cuda") == "torch"
    assert fastest_backend("teacher") == fastest_backend("unsharp") == "torch"  # no INT8 export / classical
    assert fastest_backend(save_model(tmp_path / "m.safetensors", perturbed("student-s"))) == "torch"
