"""Where full-batch gradient descent's loss levels off, against the exact D1 floor and the horizon floors.

On the digits (``n`` training images, one-hot targets, the squared loss ``(1/2n)‖f − Y‖²``), a one-hidden-layer
tanh MLP is trained by full-batch gradient descent at step ``η`` for ``T`` steps, for several widths. For each
run the table gives the measured final loss and three numbers beside it — one known before training (a priori),
two computed from the final kernel (post hoc: they explain the loss after the fact, they do not predict it):

- the exact D1 floor ``(1/2n)‖(I − P)Y‖²`` of the final kernel (the loss no training of the coefficients can
  remove at that Jacobian; ``theory/results.md#alignment-lower-bound``),
- the horizon floor ``(1/2n)‖(I − P_T)Y‖²`` of the *initial* kernel: the part of ``Y`` in eigen-directions that
  gradient descent with step ``η`` cannot fit in ``T`` steps (``ηλT/n < 1``; ``theory/alignment.md``), and
- the same horizon floor of the *final* kernel.

Each floor comes with its step ratio ``ηλ_max/n`` and, beyond the stable step 2, its unstable part: the
directions with ``ηλ/n > 2``, which grow instead of being fitted, and their share of ``‖Y‖²``
(``theory/alignment.md#horizon-residual``).

The gap between the two horizon floors is the representation learning the paper is about: the kernel
moved towards the target.

    python -m bench.horizon --output horizon.md      # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diagnostics import check_alignment
from diagnostics.data import load_dataset
from diagnostics.models import build_model


def run(width: int, n: int, lr: float, steps: int, seed: int) -> dict:
    """Train one width and measure the floors at the start and the end."""
    data = load_dataset("digits", n_train=n, seed=seed, flatten=True)
    X, y = data.X_train, data.y_train
    Y = F.one_hot(y, 10).to(X.dtype)
    model = build_model("mlp", width, input_shape=(X.shape[1],), n_out=10, seed=seed, depth=1, activation="tanh")
    horizon = (lr, steps)
    start = check_alignment(model, (X, Y), probe_size=None, horizon=horizon)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.5 * ((model(X) - Y) ** 2).sum() / n
        loss.backward()
        optimizer.step()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"width {width}: gradient descent at η = {lr} diverged")
    end = check_alignment(model, (X, Y), probe_size=None, horizon=horizon)
    return {
        "width": width, "d": sum(p.numel() for p in model.parameters()), "final_loss": end.loss,
        "d1": end.verdict.status, "exact_floor": end.loss_lower_bound, "residual": end.residual,
        "horizon_initial": start.horizon_loss_floor, "horizon_final": end.horizon_loss_floor,
        "unstable_initial": start.horizon_unstable, "unstable_final": end.horizon_unstable, "initial_loss": start.loss,
    }


def _floor(r: dict, when: str) -> str:
    """A horizon floor as a multiple of the final loss, with its step ratio ηλ_max/n and its unstable part."""
    floor, part = r[f"horizon_{when}"], r[f"unstable_{when}"]
    if part is None:  # a premise not met
        return "not applicable"
    text = f"{floor:.4f} ({floor / r['final_loss']:.2f}×; ηλ_max/n = {part.step_ratio:.3f}"
    if part.directions:
        text += (f"; unstable: {part.directions} direction{'s' * (part.directions > 1)}, "
                 f"{100 * part.share:.2g} % of ‖Y‖², ×{part.growth:.4g} per step")
    return text + ")"


def table(rows: list[dict], n: int, lr: float, steps: int) -> str:
    """The markdown table, with each floor as a multiple of the measured final loss."""
    lines = [
        f"n = {n} digits, m = 10 outputs (n·m = {10 * n}), tanh MLP with one hidden layer, full-batch GD, "
        f"η = {lr}, T = {steps} steps, float64 measurements:",
        "",
        "| width | d | final loss | D1 (final kernel) | exact floor | horizon floor, initial kernel | "
        "horizon floor, final kernel |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['width']} | {r['d']:,} | {r['final_loss']:.4f} | {r['d1']} | {r['exact_floor']:.2e} | "
            f"{_floor(r, 'initial')} | {_floor(r, 'final')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the widths, print the table (and write it to ``--output``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    begin = time.perf_counter()
    rows = []
    for width in args.widths:
        rows.append(run(width, args.n, args.lr, args.steps, args.seed))
        print(f"width {width}: final loss {rows[-1]['final_loss']:.4f} ({time.perf_counter() - begin:.0f} s)",
              flush=True)
    text = table(rows, args.n, args.lr, args.steps) + f"\n\n({time.perf_counter() - begin:.0f} s)\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
