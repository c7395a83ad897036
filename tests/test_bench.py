import json

from sharpkd.cli import main


def test_bench_reports_every_cell(tmp_path, capsys):
    out = tmp_path / "b.json"
    png = tmp_path / "b.png"
    methods = "unsharp-opencv,student-torch,student-onnx,student-onnx-int8"
    assert main(["bench", "--methods", methods, "--resolutions", "64x48,96x80",
                 "--runs", "3", "--warmup", "1", "--json", str(out), "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "precision fp32" in text and "| student-onnx | onnx | fp32 |" in text and "| 96x80 |" in text
    assert "| student-onnx-int8 | onnx-int8 | int8 |" in text
    assert "measuring student-torch at 64x48" in captured.err  # progress while it runs
    res = json.loads(out.read_text())
    assert len(res["rows"]) == 8
    assert all(r["runs"] >= 3 and r["fps"] > 0 and abs(r["mp_per_s"] - r["width"] * r["height"] / 1e6 * r["fps"])
               < 1e-6 * r["mp_per_s"] + 1e-9 for r in res["rows"])
    assert res["environment"]["logical_cpus"] >= 1 and png.stat().st_size > 1000


def test_bench_rejects_bad_arguments(capsys):
    assert main(["bench", "--methods", "warp-drive"]) == 2
    assert main(["bench", "--methods", "unsharp-opencv", "--resolutions", "big"]) == 2
    assert "WxH" in capsys.readouterr().err


def test_bench_times_a_model_file_by_its_path(tmp_path, capsys):
    """A model file (or run folder) that exists can be timed beside the shipped methods; a path that does not
    exist is an unknown method."""
    from sharpkd.checkpoint import save_model
    from sharpkd.models import Student, StudentConfig

    path = save_model(tmp_path / "tiny.safetensors", Student(config=StudentConfig(width=8, low_width=8)))
    out = tmp_path / "b.json"
    assert main(["bench", "--methods", f"{path}-torch", "--resolutions", "64x48", "--runs", "3", "--warmup", "1",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["fps"] > 0
    assert main(["bench", "--methods", f"{tmp_path / 'missing.safetensors'}-torch"]) == 2
    assert "PATH-torch" in capsys.readouterr().err
    # a two-pass kernel student: one pass per frame by default (as sharpkd video), two on request
    from sharpkd.models.kstudent import KernelStudent, KernelStudentConfig

    ks = save_model(tmp_path / "ks.safetensors", KernelStudent(config=KernelStudentConfig(
        width=8, low_width=8, low_blocks=1, high_blocks=1, passes=2)))
    for flag, want in (([], 1), (["--passes", "2"], 2)):
        assert main(["bench", "--methods", f"{ks}-torch", "--resolutions", "64x48", "--runs", "3", "--warmup", "1",
                     "--json", str(out), *flag]) == 0
        assert json.loads(out.read_text())["rows"][0]["passes"] == want


def test_bench_median_over_runs(tmp_path, load_script):
    """benchmarks/bench_median.py: each (method, resolution) cell gets every run's FPS, in order, and the median."""
    mod = load_script("benchmarks/bench_median.py")

    def row(method, w, fps):
        return {"method": method, "width": w, "height": 480, "backend": "onnx", "precision": "fp32", "threads": 2,
                "fps": fps}

    files = []
    for i, (a, b) in enumerate([(10.0, 30.0), (14.0, 20.0), (12.0, 40.0)]):
        f = tmp_path / f"b{i}.json"
        f.write_text(json.dumps({"rows": [row("student-onnx", 640, a), row("student-onnx", 320, b)]}))
        files.append(f)
    rows = mod.medians(files)
    assert [(r["width"], r["fps_each"], r["fps_median"]) for r in rows] == [(640, [10.0, 14.0, 12.0], 12.0),
                                                                            (320, [30.0, 20.0, 40.0], 30.0)]
