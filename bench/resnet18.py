"""ResNet-18 (torchvision's architecture, defined here) and its empirical NTK against neural-tangents' figures.

    python -m bench.resnet18 --device cuda        # 224×224: 8 × 8 and 1 × 1,000 logits; 32×32: n·m = 10²…10⁴
    python -m bench.resnet18 --device cpu --quick     # smoke run: 16×16, 1 sample × 2 logits

The public reference for the same work is neural-tangents' structured-derivative empirical NTK of
ResNet-18 at 224×224 on a V100 (Novak et al., "Fast Finite Width Neural Tangent Kernel", ICML 2022):
90.6 ms for 8 samples × 8 logits, 985 ms for one sample × 1,000 logits (where its other methods ran out of
memory). Here the same Gram ``K = J Jᵀ`` (float32, eval mode) is timed for ``ntk_gram`` with ``auto`` and
``structured``: the median of ``--repeats`` calls after one warm-up call (which includes ``auto``'s timed
choice), synchronised on a GPU, with the peak GPU memory and the largest relative difference to the
per-output autograd loop in float64 on the same device (skipped where ``J`` would exceed 8 GiB; the float32
loop itself is off by ~2e-4 on ResNet-18, the structured path by ~1e-7).
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch import nn

from bench.ntk import _timed
from diagnostics import ntk_gram, reference_gram
from diagnostics.engine import Measurement

STRATEGIES = ("auto", "structured")
#: The float64 autograd loop that checks each Gram holds ``J`` (``nm × d``); above this many bytes it is skipped.
REFERENCE_BYTES = 8 * 2**30
#: neural-tangents' structured-derivative NTK of ResNet-18 at 224×224 on a V100: (samples, logits) → seconds.
NEURAL_TANGENTS_V100 = {(8, 8): 0.0906, (1, 1000): 0.985}


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm, and the identity (or a strided 1×1 projection) added."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's ``resnet18``: 7×7 stem, max pool, BasicBlock × [2, 2, 2, 2], global average pool, linear.

    11.7 M parameters with 1,000 classes; torchvision's initialisation (Kaiming-normal convolutions, unit
    batch-norm scales). Any input size: the stem and the stages divide it by 32 (rounding up).
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, inplanes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.fc(h.mean((2, 3)))


def measure(n: int, m: int, size: int, device: torch.device, repeats: int,
            strategies: tuple[str, ...] = STRATEGIES) -> list[str]:
    """Table rows for ``n`` samples × ``m`` logits at ``size × size``, one per strategy, against the reference."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ResNet18(m).eval().to(device)
        x = torch.randn(n, 3, size, size).to(device)
    d = sum(p.numel() for p in model.parameters())
    small = n * m * d * 8 <= REFERENCE_BYTES  # the loop holds J
    K_ref = reference_gram(copy.deepcopy(model).double(), x.double()) if small else None
    reference = NEURAL_TANGENTS_V100.get((n, m)) if size == 224 else None
    rows = []
    for strategy in strategies:
        with Measurement(model, x, strategy=strategy) as job:
            chose = job.strategy
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        K = ntk_gram(model, x, strategy=strategy)  # warm-up
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        fn = lambda model, x, s=strategy: ntk_gram(model, x, strategy=s)  # noqa: E731
        seconds = statistics.median(_timed(fn, model, x, str(device))[1] for _ in range(repeats))
        diff = "—" if K_ref is None else f"{float((K.double() - K_ref).abs().max() / K_ref.abs().max()):.1e}"
        versus = f"{reference * 1e3:.1f} ms ({reference / seconds:.2f}× ours)" if reference else "—"
        memory = f"{peak:.1f}" if peak is not None else "—"
        rows.append(f"| {size}×{size} | {n} × {m} | {strategy} ({chose}) | {seconds * 1e3:.1f} | {memory} "
                    f"| {diff} | {versus} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16×16, 1 sample × 2 logits, auto, one call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="also write the table to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    runs = [(1, 2, 16)] if args.quick else [(8, 8, 224), (1, 1000, 224), (10, 10, 32), (100, 10, 32), (1000, 10, 32)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"ResNet-18 empirical NTK, float32, eval mode, {name}, torch {torch.__version__}; "
             f"median of {1 if args.quick else args.repeats} calls after a warm-up.", "",
             "| input | samples × logits | strategy (ran) | time (ms) | peak GPU memory (GiB) | max rel. diff "
             "| neural-tangents, V100 |", "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for n, m, size in runs:  # each row printed when measured: a run stopped by a time limit keeps them
        rows = measure(n, m, size, device, 1 if args.quick else args.repeats, ("auto",) if args.quick else STRATEGIES)
        print("\n".join(rows), flush=True)
        lines += rows
    text = "\n".join(lines) + "\n"
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
