"""What float64 costs on the CPU: ``check_alignment`` in float32 against float64, side by side in one process.

The checks compute in float64 on the CPU by default (``diagnostics.engine.precision.verdict_dtype``) because
the D1 verdict of a float32 measurement is often decided by its rank rule rather than by the model
(``docs/verdicts.md``). This measures the price on the digits models: the median time of ``check_alignment``
in each dtype over interleaved repetitions, their ratio, and whether the two verdicts agree.

    python -m bench.precision --output precision.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from diagnostics import check_alignment
from diagnostics.data import load_dataset
from diagnostics.models import CNN, MLP, ResNet


def models() -> dict[str, torch.nn.Module]:
    """The digits MLP, CNN and ResNet of the benchmarks, seeded."""
    torch.manual_seed(0)
    return {
        "MLP (2 × 256)": MLP(64, 256, 10, depth=2),
        "CNN (width 16)": CNN(1, 16, 10, image_size=8),
        "ResNet-BN (width 8)": ResNet(1, 8, 10, image_size=(8, 8)),
    }


def measure(model: torch.nn.Module, data: tuple, probe: int, repeats: int) -> dict:
    """Median seconds per dtype (interleaved repetitions) and the two verdicts."""
    times: dict[torch.dtype, list[float]] = {torch.float32: [], torch.float64: []}
    verdicts = {}
    for _ in range(repeats):
        for dtype in times:
            start = time.perf_counter()
            report = check_alignment(model, data, loss="ce", probe_size=probe, dtype=dtype)
            times[dtype].append(time.perf_counter() - start)
            verdicts[dtype] = (report.verdict.status, report.residual, report.dtype)
    f32, f64 = (statistics.median(times[d]) for d in (torch.float32, torch.float64))
    return {"f32": f32, "f64": f64, "ratio": f64 / f32, "verdict32": verdicts[torch.float32],
            "verdict64": verdicts[torch.float64]}


def main(argv: list[str] | None = None) -> int:
    """Print the table (and write it to ``--output``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    digits = load_dataset("digits")
    data = (digits.X_train, digits.y_train)
    lines = [
        f"`check_alignment(model, digits, loss=\"ce\", probe_size=n)` on the CPU ({args.threads} threads), median of "
        f"{args.repeats} interleaved runs. The float32 time includes the float64 re-measurement that a float32 "
        "measurement triggers when it cannot decide D1 (its verdict column then says so and shows the final answer):",
        "",
        "| model | n·m | float32 (s) | float64 (s) | float64 / float32 | D1 in float32 (a) | D1 in float64 (a) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, model in models().items():
        for probe in args.probes:
            r = measure(model, data, probe, args.repeats)
            (s32, a32, d32), (s64, a64, _) = r["verdict32"], r["verdict64"]
            shown32 = f"{s32} ({a32:.1e})" if d32 == "float32" else f"re-measured in float64: {s32} ({a32:.1e})"
            lines.append(f"| {name} | {10 * probe} | {r['f32']:.2f} | {r['f64']:.2f} | {r['ratio']:.2f}× | "
                         f"{shown32} | {s64} ({a64:.1e}) |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
