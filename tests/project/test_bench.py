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


def test_gpu_check_quick_smoke_run_on_the_cpu_writes_every_section(tmp_path):
    from bench.gpu_check import steps

    out = tmp_path / "check.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = out.read_text()
    assert summary.startswith("# GPU check (quick): cpu") and "- torch " in summary
    for step in steps(quick=True):
        section = summary.split(f"## {step.title}\n", 1)[1].split("\n## ", 1)[0]
        assert "Status: ok" in section, section[-2000:]
    if not torch.cuda.is_available():
        assert "no CUDA device on this machine" in summary  # the CUDA cases, skipped with the reason
    for table in ("| MLP | 40 | ours: auto |", "| 16×16 | 1 × 2 | auto", "| tiny BERT |",
                  "| penultimate/rank-one |"):
        assert table in summary, table


def test_a_failing_or_slow_gpu_check_step_is_recorded_and_the_check_goes_on(tmp_path):
    from bench.gpu_check import Step, run_step

    failing = run_step(Step("bad option", ("bench.gpu_check", "--device", "tpu"), 60), "cpu", tmp_path)
    assert "Status: failed (exit code 2)" in failing and "invalid choice: 'tpu'" in failing
    slow = run_step(Step("slow", ("timeit", "-n", "1", "import time; time.sleep(60)"), 2), "cpu", tmp_path)
    assert "Status: stopped at its time limit of 2 s" in slow
