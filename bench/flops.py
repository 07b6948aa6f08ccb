"""FLOPs of the cheapest exact method and the machine's measured matrix-multiply peak."""

from __future__ import annotations

import time

import torch
from torch import nn

from diagnostics.engine import Measurement
from diagnostics.engine.choice import synchronize
from diagnostics.engine.structured import StructuredLayers


def forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-add FLOPs (×2) of the linear and convolutional layers in one forward pass."""
    total = 0.0

    def hook(module, args, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2.0 * output.numel() * module.in_features
        else:
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += 2.0 * output.numel() * k

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def cheapest_flops(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs the cheapest exact method must do: per layer the cheaper exact Gram form, using the symmetry
    of ``K`` and counting each product once (``LayerRule.gram_costs``: for a linear layer on vectors the
    bias joins the weight, ``2n²k + (nm)²o + (nm)²``), plus one forward and ``m`` cotangent passes (each
    counted as one forward)."""
    with Measurement(model, x, strategy="structured") as job:
        layers = StructuredLayers(job, job.fm.names)
        if layers.covered != set(job.fm.names):
            raise ValueError("the FLOP count needs every parameter covered by the structured path")
        gram = sum(min(layer.rule.gram_costs(layer, job.m).values()) for layer in layers.layers.values())
        m = job.m
    return gram + (1 + m) * forward_flops(model, x)


def matmul_peak(device: str = "cpu", size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of one large float32 ``A @ B``: the best of ``repeats`` (a peak; robust to other load)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    times = []
    for _ in range(repeats + 1):
        synchronize(torch.device(device))
        start = time.perf_counter()
        a @ b
        synchronize(torch.device(device))
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / min(times[1:])


