"""The benchmark runs: a quick smoke run of ``python -m bench.ntk`` writes the comparison table."""

import subprocess
import sys

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
