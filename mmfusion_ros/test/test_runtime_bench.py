"""The benchmark plumbing: the MAC counter against hand-computed counts, report rendering, and
`mmfusion bench` running a module, reporting a missing one, and writing markdown + JSON."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


def test_mac_counter_matches_hand_counts():
    from torch import nn

    from mmfusion_ros.bench.models import count_macs

    torch.set_num_threads(1)
    lin = nn.Linear(16, 8)
    assert count_macs(lin, (torch.zeros(3, 16),)) == 3 * 8 * 16
    conv = nn.Conv2d(4, 6, 3, padding=1)  # out 6x10x10, each 4*3*3 MACs
    assert count_macs(conv, (torch.zeros(1, 4, 10, 10),)) == 6 * 10 * 10 * 4 * 9
    dw = nn.Conv1d(8, 8, 5, padding=2, groups=8)  # depthwise: 1*5 per output
    assert count_macs(dw, (torch.zeros(2, 8, 20),)) == 2 * 8 * 20 * 5
    gru = nn.GRU(4, 6, batch_first=True)  # 3 gates x (in*h + h*h) per step
    assert count_macs(gru, (torch.zeros(2, 7, 4),)) == 2 * 7 * 3 * (4 * 6 + 6 * 6)

    class Attn(nn.Module):
        def forward(self, q, k):
            return q @ k.transpose(-1, -2)  # (B, L, L) with D-long dot products

    assert count_macs(Attn(), (torch.zeros(2, 5, 8), torch.zeros(2, 5, 8))) == 2 * 5 * 5 * 8


def test_render_table_and_markdown():
    from mmfusion_ros.bench import machine, section
    from mmfusion_ros.commands.bench import render_markdown, render_table

    sec = section("T", ["a", "bb"], [[1, "x"], [22, "yy"]], "n")
    txt = render_table(sec)
    assert txt.splitlines()[2].split() == ["a", "bb"] and "note: n" in txt
    header = {"date": "d", "machine": machine(), "model": "m", "seconds": 1.0}
    md = render_markdown([sec], header, ["models: ok"], "mmfusion bench")
    assert "| a | bb |" in md and "| 22 | yy |" in md and header["machine"]["cpu"] in md


def test_bench_command_runs_models_and_reports_missing(random_model_dir, tmp_path, monkeypatch, capsys):
    from mmfusion_ros.cli import main

    out, js = tmp_path / "b.md", tmp_path / "b.json"
    rc = main(["bench", "--quick", "--only", "models", "--model", str(random_model_dir), "--out", str(out),
               "--json", str(js)])
    assert rc == 0
    doc = json.loads(js.read_text())
    titles = [s["title"] for s in doc["sections"]]
    assert any("torch eager vs ONNX Runtime" in t for t in titles)
    lat = next(s for s in doc["sections"] if "latency" in s["title"])
    parts = [r[0] for r in lat["rows"]]
    assert parts[:4] == ["camera_encoder", "lidar_encoder", "audio_encoder", "imu_encoder"]
    assert "fused tick" in parts and "caption (greedy)" in parts
    assert all(float(r[1]) > 0 and float(r[3]) > 0 for r in lat["rows"])  # measured, positive
    assert "# Benchmarks" in out.read_text()
    assert main(["bench", "--only", "nope", "--out", "-"]) == 2
    # a bench module that is not written yet is reported, not fatal
    monkeypatch.setattr("mmfusion_ros.bench.MODULES", ["models", "not_written_yet"])
    capsys.readouterr()
    assert main(["bench", "--only", "not_written_yet", "--model", str(random_model_dir), "--out", str(out)]) == 0
    assert "not_written_yet: missing" in capsys.readouterr().out
    assert "not_written_yet: missing" in out.read_text()
