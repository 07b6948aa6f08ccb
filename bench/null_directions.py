"""Why D1 on the whole synthetic set of ``bench.distributed_scale`` is *not established*: ``J``'s null directions.

The resolution rule (theory/alignment.md#resolution) refutes D1 only when the kept rank reaches
``min(nm, d)``: a residual may otherwise lie in directions of ``Col J`` below the float64 resolution. This script
counts, on ``n`` samples of :class:`bench.distributed_scale.JitteredDigits` (``nm ≥ d`` for ``n ≥ 993``), the
directions of parameter space that the digits CNN of ``bench/models.py`` (d = 9,930, the model of the whole-set
check) leaves at round-off in the exact Gram ``JᵀJ`` (float64, formed from per-sample Jacobians):

1. exactly-zero columns of ``J`` (``(JᵀJ)_jj = 0``: units dead on every sample, weights that only meet them);
2. the rescaling of each ReLU channel, ``(W_in[c], b_in[c]) ↦ α(W_in[c], b_in[c])``,
   ``W_out[:, c] ↦ W_out[:, c]/α``, which leaves ``f`` unchanged, so ``J v_c = 0`` exactly for
   ``v_c = (W_in[c], b_in[c], −W_out[:, c])`` (16 channels of ``conv1``, 32 of ``conv2``);
3. what remains below the rank tolerance ``nm·eps·λ_max`` once 1 and 2 are projected out.

Every direction counted is one the measured Gram cannot tell from ``null J`` (the premise ``‖K̃ − K‖ ≤ δ``), so
the kept rank stays below ``d``, and a residual however large is *not established* (theory/alignment.md#preconditioned).

    python -m bench.null_directions --n 1200      # about 8 minutes on one CPU core (one 8,500² eigendecomposition)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.distributed_scale import JitteredDigits
from bench.models import build
from diagnostics import jacobian


def parameter_gram(model: torch.nn.Module, data: JitteredDigits, batch: int = 200) -> np.ndarray:
    """``JᵀJ`` in float64, accumulated over batches of per-sample Jacobians."""
    d = sum(p.numel() for p in model.parameters())
    G = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, len(data), batch):
        x = torch.stack([s for s, _ in data.__getitems__(list(range(start, min(len(data), start + batch))))])
        J = jacobian(model, x, dtype=torch.float64)
        G += J.T @ J
    return G.numpy()


def rescalings(model: torch.nn.Module) -> np.ndarray:
    """The ``d × 48`` matrix of the ReLU channels' rescaling directions ``v_c`` (``J v_c = 0`` exactly)."""
    names = [k for k, _ in model.named_parameters()]
    params = {k: p.detach().double().numpy() for k, p in model.named_parameters()}
    offsets = dict(zip(names, np.cumsum([0] + [params[k].size for k in names[:-1]]), strict=True))

    def direction(parts: list[tuple[str, np.ndarray]]) -> np.ndarray:
        v = np.zeros(sum(p.size for p in params.values()))
        for name, block in parts:
            v[offsets[name]:offsets[name] + block.size] = block.ravel()
        return v

    def only(name: str, index: tuple, sign: float = 1.0) -> np.ndarray:
        block = np.zeros_like(params[name])
        block[index] = sign * params[name][index]
        return block

    head = params["head.weight"].reshape(-1, 32, 16)  # the head reads conv2's 32 channels × 4 × 4 positions
    vectors = [direction([("conv1.weight", only("conv1.weight", (c,))), ("conv1.bias", only("conv1.bias", (c,))),
                          ("conv2.weight", only("conv2.weight", (slice(None), c), -1.0))]) for c in range(16)]
    for c in range(32):
        block = np.zeros_like(head)
        block[:, c] = -head[:, c]
        vectors.append(direction([("conv2.weight", only("conv2.weight", (c,))),
                                  ("conv2.bias", only("conv2.bias", (c,))), ("head.weight", block)]))
    return np.array(vectors).T


def main(argv: list[str] | None = None) -> None:
    """Print the counts of the three kinds of directions and the spectrum left at round-off."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1200, help="samples (n·m = 10n rows; at least 993 for nm ≥ d)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = build("CNN", 1)[0].double()  # the whole-set check's model (seed 0)
    G = parameter_gram(model, JitteredDigits(args.n))
    d, nm, eps = G.shape[0], 10 * args.n, float(np.finfo(np.float64).eps)
    zero = np.diag(G) == 0.0
    S = rescalings(model)
    leak = float(np.abs(G @ S).max() / np.abs(G).max())
    N, R = np.linalg.qr(np.concatenate([np.eye(d)[:, zero], S], axis=1))
    known = int((np.abs(np.diag(R)) > 1e-10 * np.abs(R).max()).sum())
    basis, _ = np.linalg.qr(np.concatenate([N[:, :known], np.random.default_rng(0).standard_normal((d, d - known))],
                                           axis=1))
    B = basis[:, known:]
    eigenvalues = np.linalg.eigvalsh(B.T @ G @ B)
    lam_max = float(eigenvalues[-1])
    below = int((eigenvalues < nm * eps * lam_max).sum())
    print(f"digits CNN, d = {d:,}; JitteredDigits n = {args.n:,}, nm = {nm:,}; rank_tol = nm·eps·λ_max = "
          f"{nm * eps:.2e}·λ_max")
    print(f"1. exactly-zero columns of J: {int(zero.sum()):,}")
    print(f"2. ReLU rescalings: {S.shape[1]} (max |JᵀJ v| / max |JᵀJ| = {leak:.1e}); with 1: {known:,} independent")
    print(f"3. below rank_tol on the other {d - known:,} directions: {below:,} (smallest eigenvalues / λ_max: "
          f"{', '.join(f'{v / lam_max:.1e}' for v in eigenvalues[:3])}; the next kept one: "
          f"{eigenvalues[below] / lam_max:.1e})")
    print(f"kept rank at most {d - known - below:,} of min(nm, d) = {min(nm, d):,}: D1 cannot be refuted by "
          f"measurement; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
