"""The benchmark runs: a quick smoke run of ``python -m bench.ntk`` writes the comparison table."""

import subprocess
import sys

import torch
from helpers import ROOT


def test_benchmark_quick_smoke_run(tmp_path):
    out = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ntk", "--quick", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    for name in ("ours: auto", "ours: structured", "torch.func", "nngeometry", "curvlinops", "BackPACK"):
        assert name in table
    assert "% of peak" in table


def test_cheapest_flops_of_a_tiny_mlp_match_a_hand_count():
    from torch import nn

    from bench.flops import cheapest_flops

    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    n, m, rows = 5, 2, 10
    # each layer: inputs' Gram 2n²k + half the cotangents' Gram (nm)²o + half the fused multiply-add (nm)²
    layer1 = 2 * n * n * 3 + rows**2 * 4 + rows**2  # 650 (the per-sample form would be 1,920)
    layer2 = 2 * n * n * 4 + rows**2 * 2 + rows**2  # 500 (per-sample: 1,200)
    passes = (1 + m) * 2 * n * (3 * 4 + 4 * 2)  # one forward and m cotangent passes: 600
    assert cheapest_flops(model, x) == layer1 + layer2 + passes == 1750
