"""Sharpen video files, cameras and streams frame by frame (OpenCV for decoding and encoding).

Decoding, inference and encoding run in three threads joined by small bounded queues, so the
reader decodes frame n+1 and the writer encodes frame n-1 while the network works on frame n;
throughput approaches the model's own. Frames go through the same
:class:`~sharpkd.infer.Sharpener` as photos.

Output keeps the input's frame size and frame rate. OpenCV's encoders need even dimensions: a
video with an odd width or height (rare; most codecs cannot store one) loses its last column or
row, with a warning.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sharpkd.infer import Sharpener

FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}
_END = object()


class VideoError(ValueError):
    """The video cannot be opened, read or written."""


@dataclass
class VideoStats:
    frames: int
    seconds: float
    width: int
    height: int
    fps_in: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def open_capture(source: str | int):
    import cv2

    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise VideoError(f"cannot open video {source!r} (missing, not a video, or an unsupported codec)")
    return cap


def _frames(cap, limit: int = 0) -> Iterator[np.ndarray]:
    n = 0
    while not limit or n < limit:
        ok, frame = cap.read()
        if not ok:
            return
        n += 1
        yield frame


class FrameSharpener:
    """Sharpens BGR frames in order. A model that estimates the blur (the kernel student, the teacher)
    is given an estimate from the first frame, renewed from every ``estimate_every``-th frame (0: the
    first frame's for the whole video) and shared by the frames in between, since estimating takes
    seconds. ``wait=False`` (live video) makes the renewals in a background thread while frames keep
    using the previous estimate; ``wait=True`` (files) makes them in line, so the output does not
    depend on timing."""

    def __init__(self, sharpener: Sharpener, estimate_every: int = 300, wait: bool = True):
        if estimate_every < 0:
            raise ValueError("estimate_every must be >= 0")
        self.sharpener, self.every, self.wait = sharpener, estimate_every, wait
        self.frames = 0
        self.estimates: list | None = None
        self.estimated = 0  # estimates made
        self._pending = None
        self._pool = None

    def _estimate(self, x):
        from concurrent.futures import ThreadPoolExecutor

        if self._pending is not None and self._pending.done():
            self.estimates, self._pending = self._pending.result(), None
            self.estimated += 1
        due = self.estimates is None or (self.every and self.frames % self.every == 0)
        if due and self._pending is None:
            if self.wait or self.estimates is None:
                self.estimates = self.sharpener.estimate_blur(x)
                self.estimated += 1
            else:
                self._pool = self._pool or ThreadPoolExecutor(max_workers=1)
                self._pending = self._pool.submit(self.sharpener.estimate_blur, x.clone())
        return self.estimates

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        from sharpkd.infer import frame_to_tensor, tensor_to_frame

        if not self.sharpener.blind:
            self.frames += 1
            return self.sharpener.sharpen_frame(frame, bgr=True)
        x = frame_to_tensor(frame, bgr=True)  # once: the estimate (when due) and the sharpening share it
        est = self.sharpener.frame_estimates(self._estimate(x))
        self.frames += 1
        return tensor_to_frame(self.sharpener.sharpen_tensor(x, est), bgr=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def pipeline(frames: Iterator[np.ndarray], process: Callable[[np.ndarray], np.ndarray],
             consume: Callable[[np.ndarray], None], depth: int = 4) -> int:
    """Run ``consume(process(frame))`` for every frame with decoding, processing and consuming
    overlapped in three threads; returns the number of frames. Errors in any stage propagate."""
    q_in: queue.Queue = queue.Queue(depth)
    q_out: queue.Queue = queue.Queue(depth)
    errors: list[BaseException] = []
    stop = threading.Event()

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for f in frames:
                if not put(q_in, f):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)
            stop.set()
        finally:
            put(q_in, _END)

    def write() -> None:
        try:
            while True:
                item = q_out.get()
                if item is _END:
                    return
                consume(item)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)
            stop.set()

    reader = threading.Thread(target=read, daemon=True)
    writer = threading.Thread(target=write, daemon=True)
    reader.start()
    writer.start()
    n = 0
    try:
        while not stop.is_set():
            try:
                item = q_in.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                break
            if not put(q_out, process(item)):
                break
            n += 1
    except BaseException:
        stop.set()
        raise
    finally:
        while True:  # hand the writer its end marker even if its queue is full of unwritten frames
            try:
                q_out.put(_END, timeout=0.1)
                break
            except queue.Full:
                if not writer.is_alive():
                    break
        writer.join()
        stop.set()
        reader.join(timeout=5)
    if errors:
        raise errors[0]
    return n


def sharpen_video(sharpener: Sharpener, src: str | Path, dst: str | Path, *, overwrite: bool = False,
                  max_frames: int = 0, progress: bool = True, estimate_every: int = 300) -> VideoStats:
    """Sharpen every frame of ``src`` into ``dst`` (same frame size and rate; container by extension).
    ``estimate_every``: for models that estimate the blur, see :class:`FrameSharpener`."""
    import cv2
    from tqdm.auto import tqdm

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise VideoError(f"{src}: no such file")
    fourcc = FOURCC.get(dst.suffix.lower())
    if fourcc is None:
        raise VideoError(f"{dst}: unsupported output extension (use one of {', '.join(sorted(FOURCC))})")
    if dst.exists() and dst.resolve() == src.resolve():
        raise VideoError(f"refusing to overwrite the input {src}; choose another output")
    if dst.exists() and not overwrite:
        raise VideoError(f"{dst} exists; pass --overwrite to replace it")
    tmp = dst.with_name(f".{dst.stem}.partial{dst.suffix}")  # the container follows the extension
    cap = open_capture(str(src))
    try:
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        first = next(_frames(cap, 1), None)
        if first is None or w <= 0 or h <= 0:
            raise VideoError(f"{src}: no frames could be decoded")
        if max_frames:
            total = min(total or max_frames, max_frames)
        if w % 2 or h % 2:
            warnings.warn(f"{src}: {w}x{h} has an odd dimension; video encoders need even sizes, so the output "
                          f"is {w - w % 2}x{h - h % 2}", stacklevel=2)
        dst.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
        if not writer.isOpened():
            raise VideoError(f"cannot write {dst} with codec {fourcc}")
        bar = tqdm(total=total, unit="frame", desc="video", disable=not progress)

        def frames() -> Iterator[np.ndarray]:
            yield first
            yield from _frames(cap, max_frames - 1 if max_frames else 0)

        def consume(frame: np.ndarray) -> None:
            writer.write(frame)
            bar.update(1)

        t0 = time.perf_counter()
        try:
            n = pipeline(frames(), FrameSharpener(sharpener, estimate_every, wait=True), consume)
        finally:
            seconds = time.perf_counter() - t0
            writer.release()
            bar.close()
        if n == 0:
            tmp.unlink(missing_ok=True)
            raise VideoError(f"{src}: no frames could be decoded")
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        cap.release()
    return VideoStats(n, seconds, w, h, fps)


def live(sharpener: Sharpener, source: str | int, *, window: bool = True, mjpeg_port: int = 0, max_frames: int = 0,
         side_by_side: bool = True, on_frame: Callable[[int, float], None] | None = None,
         estimate_every: int = 300) -> VideoStats:
    """Sharpen a camera or stream and show it: an OpenCV window, or an MJPEG page on
    http://127.0.0.1:<mjpeg_port>/ when there is no display. Stops on 'q', Ctrl+C or ``max_frames``.
    ``estimate_every``: for models that estimate the blur, renewed in the background (:class:`FrameSharpener`)."""
    import cv2

    cap = open_capture(source)
    server = _MjpegServer(mjpeg_port) if mjpeg_port else None
    if window and not server and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        cap.release()
        raise VideoError("no display for a preview window: use --mjpeg PORT to watch in a browser")
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    t0 = time.perf_counter()
    shown = 0

    class Quit(Exception):
        pass

    def consume(frame: np.ndarray) -> None:
        nonlocal shown
        shown += 1
        fps = shown / (time.perf_counter() - t0)
        cv2.putText(frame, f"{fps:.1f} FPS", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 0), 2)
        if server:
            server.publish(frame)
        elif window:
            cv2.imshow("sharpkd (left: input, right: sharpened)" if side_by_side else "sharpkd", frame)
            if cv2.waitKey(1) & 0xFF == ord("q"):
                raise Quit
        if on_frame:
            on_frame(shown, fps)

    sharpen = FrameSharpener(sharpener, estimate_every, wait=False)

    def process(frame: np.ndarray) -> np.ndarray:
        out = sharpen(frame)
        return np.hstack([frame, out]) if side_by_side else out

    try:
        pipeline(_frames(cap, max_frames), process, consume, depth=2)
    except (Quit, KeyboardInterrupt):
        pass
    finally:
        cap.release()
        sharpen.close()
        if server:
            server.close()
        elif window:
            cv2.destroyAllWindows()
    return VideoStats(shown, time.perf_counter() - t0, w, h, 0.0)


class _MjpegServer:
    """A tiny multipart/x-mixed-replace JPEG stream on 127.0.0.1 for machines without a display."""

    def __init__(self, port: int):
        import http.server

        self.frame: bytes | None = None
        self.cond = threading.Condition()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path != "/":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while True:
                        with owner.cond:
                            owner.cond.wait(timeout=5)
                            data = owner.frame
                        if data is None:
                            continue
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    return

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        print(f"live preview on http://127.0.0.1:{self.httpd.server_address[1]}/ (Ctrl+C to stop)", flush=True)

    def publish(self, frame: np.ndarray) -> None:
        import cv2

        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            with self.cond:
                self.frame = buf.tobytes()
                self.cond.notify_all()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
