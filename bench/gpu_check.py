"""The GPU check: every device test case and the benchmarks on one device, in one command, one markdown summary.

    python -m bench.gpu_check --output gpu_check.md                      # on a GPU machine: about 8 minutes
    python -m bench.gpu_check --device cpu --quick --output smoke.md     # smoke run of the same steps

Steps, each in its own process with its own time limit (a step that fails or runs out of time is
recorded with its error or its partial output, and the next one runs):

1. the CUDA cases of the test suite (``pytest -m cuda``: the ``cuda`` parameter of the ``device`` fixture);
2. the empirical-NTK benchmark (:mod:`bench.ntk`: MLP, CNN, ResNet-BN at n·m = 1,000 and 10,000, every method);
3. ResNet-18 at 224×224 against neural-tangents' published figures, and at 32×32 up to n·m = 10⁴
   (:mod:`bench.resnet18`);
4. the tracker's overhead against a training step, on the digits CNN and a tiny BERT (:mod:`bench.bench_tracker`);
5. one aligned-training run on the digits (``python -m diagnostics aligned-training``).

The summary names the device, the torch/CUDA/cuDNN versions and, per step, its command, status, time and
output; it is written atomically (:func:`diagnostics.store.write_atomic`) to ``--output``, and printed.
With ``--quick`` every step runs a tiny configuration (a smoke test of the check itself; the CUDA cases
are then reported as skipped on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.ntk import machine
from diagnostics.store import write_atomic

ROOT = Path(__file__).resolve().parents[1]
#: Characters of a step's output kept in the summary (its end).
TAIL = 6000


@dataclass(frozen=True)
class Step:
    """One step: a title, the command's arguments after ``python -m``, and its time limit in seconds.

    ``{device}`` in an argument is replaced by the device and ``{out}`` by a file or folder the step writes
    its table to (read back into the summary; the step's standard output otherwise).
    """

    title: str
    args: tuple[str, ...]
    limit_s: float
    table: str = ""  # the file under {out} holding the table ("" when the table is {out} itself)


def steps(quick: bool) -> list[Step]:
    """The check's steps: the full configuration for a GPU, or a tiny one with ``quick``."""
    tests = ("pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider", "tests")
    if quick:
        return [
            Step("CUDA test cases", (*tests[:-1], "tests/engine/test_memory.py", "tests/engine/test_inputs.py"), 60),
            Step("NTK benchmark", ("bench.ntk", "--quick", "--device", "{device}", "--models", "MLP", "--methods",
                                   "ours: auto", "--output", "{out}"), 60),
            Step("ResNet-18 NTK against neural-tangents",
                 ("bench.resnet18", "--quick", "--device", "{device}", "--output", "{out}"), 120),
            Step("Tracker overhead", ("bench.bench_tracker", "--device", "{device}", "--probe-sizes", "8",
                                      "--repeats", "1", "--batch-size", "16", "--threads", "1"), 60),
            Step("Aligned training on the digits", _aligned("{device}", "--width", "4", "--epochs", "2",
                                                            "--n-train", "100", "--n-test", "100"), 60, "table.md"),
        ]
    return [
        Step("CUDA test cases", tests, 140),
        Step("NTK benchmark", ("bench.ntk", "--device", "{device}", "--sizes", "1000", "10000", "--repeats", "3",
                               "--max-seconds", "5", "--output", "{out}"), 120),
        Step("ResNet-18 NTK against neural-tangents", ("bench.resnet18", "--device", "{device}", "--output", "{out}"),
             100),
        Step("Tracker overhead", ("bench.bench_tracker", "--device", "{device}", "--probe-sizes", "128",
                                  "--repeats", "3"), 60),
        Step("Aligned training on the digits", _aligned("{device}", "--width", "16", "--epochs", "3"), 45,
             "table.md"),
        Step("Whole-set D1, preconditioned (6·10⁵ rows)", ("bench.distributed_scale", "--n", "60000", "--nproc", "1",
                                                            "--check", "240", "--device", "{device}"), 300),
    ]


def _aligned(device: str, *options: str) -> tuple[str, ...]:
    return ("diagnostics", "aligned-training", "--device", device, "--seeds", "0", "--variants", "base",
            "penultimate/rank-one", "--switch-epoch", "1", "--no-progress", "--out", "{out}", *options)


def run_step(step: Step, device: str, workdir: Path) -> str:
    """Run one step; return its markdown section (its table or output, or the error), whatever happens."""
    out = workdir / step.title.replace(" ", "_")
    args = [a.replace("{device}", device).replace("{out}", str(out)) for a in step.args]
    command = ["python", "-m", *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=step.limit_s, env={**os.environ, "PYTHONPATH": str(ROOT)})
        status = "ok" if proc.returncode == 0 else f"failed (exit code {proc.returncode})"
        stdout, stderr = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"stopped at its time limit of {step.limit_s:.0f} s (the output so far is below)"
        stdout, stderr = _text(exc.stdout), _text(exc.stderr)
    except OSError as exc:
        status, stdout, stderr = f"could not start ({exc})", "", ""
    seconds = time.perf_counter() - start
    table = out / step.table if step.table else out
    body = table.read_text() if status == "ok" and table.is_file() else stdout
    lines = [f"## {step.title}", "", f"Command: `{' '.join(_quoted(a) for a in command)}`", "",
             f"Status: {status}; {seconds:.1f} s.", "", body.strip()[-TAIL:] or "(no output)"]
    if status != "ok" and stderr.strip():
        lines += ["", "Error output (end):", "", "```", stderr.strip()[-TAIL:], "```"]
    return "\n".join(lines)


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _quoted(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


def header(device: str, quick: bool) -> str:
    """Device name, torch, CUDA and cuDNN versions, and the command."""
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        name = machine()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return "\n".join([
        f"# GPU check{' (quick)' if quick else ''}: {device}", "",
        f"- device: {name}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda or '—'}, cuDNN {cudnn or '—'}, "
        f"Python {sys.version.split()[0]}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; load average at start "
        f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())}",
        f"- command: `python -m bench.gpu_check {' '.join(sys.argv[1:])}`",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="tiny configurations: a smoke test of the check")
    parser.add_argument("--output", default="gpu_check.md", help="the markdown summary (written atomically)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    sections = [header(args.device, args.quick)]
    with tempfile.TemporaryDirectory() as tmp:
        for step in steps(args.quick):
            print(f"[gpu_check] {step.title} (limit {step.limit_s:.0f} s)", file=sys.stderr, flush=True)
            sections.append(run_step(step, args.device, Path(tmp)))
    sections.append(f"Total: {time.perf_counter() - start:.0f} s.")
    text = "\n\n".join(sections) + "\n"
    write_atomic(args.output, lambda fh: fh.write(text.encode()))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
