"""`mmfusion bench --only towers` (bench/towers.py): the table's rows, MAC counts against hand counts and the
skip without open_clip, on a tiny OpenCLIP architecture (random weights, a few seconds)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ARCH = "mmf-bench-tiny-towers"
WIDTH, LAYERS, EMBED, IMAGE, PATCH, CTX = 64, 2, 32, 64, 16, 77
CONFIG = {  # registered under the file stem, ARCH
    "embed_dim": EMBED,
    "vision_cfg": {"image_size": IMAGE, "layers": LAYERS, "width": WIDTH, "patch_size": PATCH, "head_width": 32},
    "text_cfg": {"context_length": CTX, "vocab_size": 49408, "width": WIDTH, "heads": 2, "layers": LAYERS},
}


def _transformer_macs(n: int) -> int:
    """L residual blocks over n tokens of width w (MLP ratio 4): q/k/v/out projections 4 n w^2, MLP 8 n w^2,
    attention scores and weighted values 2 n^2 w; then the projection to the shared width."""
    return LAYERS * (12 * n * WIDTH ** 2 + 2 * n * n * WIDTH) + WIDTH * EMBED


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    from mmfusion_ros.model.open_clip_import import import_open_clip

    try:
        import_open_clip()
    except ImportError as e:
        pytest.skip(f"open_clip not installed: {e}")
    path = tmp_path_factory.mktemp("towers_bench") / f"{ARCH}.json"
    path.write_text(json.dumps(CONFIG))
    return path


def test_tower_section_rows_and_counts(tiny_config):
    from mmfusion_ros.bench.towers import tower_section
    from mmfusion_ros.commands.bench import render_table
    from mmfusion_ros.model.open_clip_towers import load_open_clip

    sec = tower_section(ARCH, runs=3, threads=(1, 2), text_batches=(1, 9), config=tiny_config)
    assert "OpenCLIP" in sec["title"] and ARCH in sec["title"]
    col = {c: i for i, c in enumerate(sec["columns"])}
    rows = sec["rows"]
    assert [(r[0].split()[0], r[col["batch"]], r[col["intra-op threads"]]) for r in rows] == [
        ("image", 1, 1), ("image", 1, 2), ("text", 1, 1), ("text", 1, 2), ("text", 9, 1), ("text", 9, 2)]
    for r in rows:
        p50, p90, p99 = (float(r[col[k]]) for k in ("p50", "p90", "p99"))
        assert 0 < p50 <= p90 <= p99 and r[col["runs"]] == 3
        assert float(r[col["p50 per item"]]) == pytest.approx(p50 / r[col["batch"]], abs=0.01)
    image_macs = (IMAGE // PATCH) ** 2 * WIDTH * 3 * PATCH ** 2 + _transformer_macs((IMAGE // PATCH) ** 2 + 1)
    assert float(rows[0][col["GMACs per item"]]) == pytest.approx(image_macs / 1e9, rel=1e-3)
    assert all(float(r[col["GMACs per item"]]) == pytest.approx(_transformer_macs(CTX) / 1e9, rel=1e-3)
               for r in rows[2:])
    model, _ = load_open_clip(ARCH, None, tiny_config)
    n_image, n_text = float(rows[0][col["params (M)"]]), float(rows[2][col["params (M)"]])
    assert n_image == pytest.approx(sum(p.numel() for p in model.visual.parameters()) / 1e6, abs=0.01)
    assert n_image + n_text == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0.02)
    assert float(rows[2][col["ONNX MB"]]) > n_text * 4 * 0.9  # float32 weights on disk
    assert "Machine:" in sec["notes"] and "3 timed calls" in sec["notes"]
    assert render_table(sec).splitlines()[2].split()[:3] == ["tower", "(input", "per"]


def test_towers_skip_without_open_clip(tmp_path, monkeypatch, capsys):
    from mmfusion_ros import bench
    from mmfusion_ros.bench import towers
    from mmfusion_ros.cli import main

    def missing():
        raise ImportError("`mmfusion towers import` needs open_clip_torch") from ModuleNotFoundError(
            "No module named 'open_clip'", name="open_clip")

    monkeypatch.setattr("mmfusion_ros.model.open_clip_import.import_open_clip", missing)
    with pytest.raises(bench.BenchSkipped, match="open_clip is not installed"):
        towers.run(quick=True)
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "stand-in"}))  # the command reads the bundle's name
    monkeypatch.setenv(bench.ENV_MODEL, str(tmp_path))
    assert main(["bench", "--only", "towers", "--out", "-"]) == 0
    captured = capsys.readouterr()
    assert "towers: skipped (open_clip is not installed (no module open_clip" in captured.out
    assert len([ln for ln in captured.err.splitlines() if "towers" in ln]) == 1  # one line, no traceback
