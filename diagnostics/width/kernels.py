r"""What the NTK Gram of one run did during training, and what its initial and final Grams predict.

Pure functions of Gram matrices ``K_t`` measured at the records of a run (``theory/alignment.md``,
``theory/width.md#s4-lazy-versus-rich``), all in float64:

- the kernel velocity ``‖K_t − K_{t'}‖_F / ‖K_{t'}‖_F / (t − t')`` per step since the previous record ``t'`` (the
  tracker's ``kernel_movement_prev`` over the steps between) and the distance to the end kernel
  ``‖K_t − K_T‖_F / ‖K_T‖_F`` (Fort et al. 2020); the kernel–target alignment ``QᵀKQ / (‖K‖_F ‖Q‖²)`` is the
  tracker's own column;
- the loss of the *linearised* dynamics: gradient descent with step ``η`` on ``(1/2n)‖f − Y‖²`` with the kernel
  frozen at ``K_0`` moves the residual by ``r ← (I − ηK_0/n) r``, so after ``T`` steps
  ``L_lin(T) = (1/2n) Σ_k (1 − ηλ_k/n)^{2T} (u_kᵀ r_0)²`` in the eigenbasis of ``K_0``;
- the horizon floor of a kernel: the part of ``Q`` in its eigen-directions with ``ηλT/n < 1`` (and those the rank
  rule discards), which ``T`` steps of size ``η`` cannot fit, ``(1/2n) Σ_{ηλ_k T/n < 1} (u_kᵀQ)²`` (as
  ``horizon_loss_floor`` of :func:`~diagnostics.check_alignment`);
- per-layer alignment: ``K = Σ_g K_g`` over parameter groups ``g`` (one layer each), the share
  ``QᵀK_gQ / QᵀKQ`` of each group and its own residual ``‖(I − P_{K_g})Q‖ / ‖Q‖``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..alignment_spectrum import horizon_energy
from ..engine.inputs import OutputSelector
from ..engine.measurement import Measurement
from ..engine.precision import rank_rule
from ..engine.spectral import Spectrum

__all__ = ["horizon_floor", "kernel_path", "layer_alignment", "layer_groups", "linearised_loss"]


def kernel_path(history: pd.DataFrame, grams: Sequence[torch.Tensor] | None = None) -> pd.DataFrame:
    """Kernel velocity per step and distance to the last Gram, one row per full record of a tracker history.

    Parameters
    ----------
    history
        Tracker records: ``step`` and ``kernel_movement_prev`` ``‖K_t − K_{t'}‖_F / ‖K_{t'}‖_F`` (since the
        previous full record ``t'``); cheap records (``tier == "cheap"``) are left out.
    grams
        ``K_t`` at the steps of the full records, ``(nm, nm)``; ``None`` when they were not kept (a history read
        from a file): the distance to the end kernel is then ``nan``.

    Returns
    -------
    pandas.DataFrame
        ``step``, ``kernel_velocity`` (``nan`` at the first record) and ``kernel_distance_end``.
    """
    full = history[history["tier"] == "full"] if "tier" in history else history
    steps = full["step"].to_numpy()
    velocity = full["kernel_movement_prev"].to_numpy(float) / np.diff(steps, prepend=np.nan)
    if grams is None:
        distance = np.full(len(steps), math.nan)
    else:
        end = grams[-1].to(torch.float64)
        end_norm = float(end.norm())
        distance = np.array([float((K.to(torch.float64) - end).norm()) / end_norm if end_norm > 0 else math.nan
                             for K in grams])
    return pd.DataFrame({"step": steps, "kernel_velocity": velocity, "kernel_distance_end": distance})


def linearised_loss(spectrum: Spectrum, residual: torch.Tensor, lr: float, steps: int, n: int) -> float:
    """Loss after ``steps`` steps of gradient descent on the model linearised at ``K`` (``spectrum``'s Gram).

    ``(1/2n) Σ_k (1 − ηλ_k/n)^{2T} (u_kᵀ r_0)²``; ``inf`` when a direction with ``ηλ_k/n > 2`` carries part of
    ``r_0`` and grows beyond the float64 range (the linearised dynamics diverge there).
    """
    c2 = spectrum.coefficients(residual).cpu().numpy() ** 2
    gain = np.abs(1.0 - lr * spectrum.eigenvalues / n)
    with np.errstate(over="ignore", divide="ignore"):
        terms = np.exp(2 * steps * np.log(gain) + np.log(c2))  # c = 0 or gain = 0: exp(−inf) = 0
    return float(terms.sum()) / (2 * n)


def horizon_floor(spectrum: Spectrum, q: torch.Tensor, lr: float, steps: int, n: int) -> float:
    """Return ``(1/2n) Σ_{ηλ_k T/n < 1 or λ_k ≤ rank_tol} (u_kᵀQ)²``, the loss ``T`` steps of size ``η`` cannot fit.

    Never below the exact floor ``(1/2n)‖(I − P)Q‖²`` (:func:`~diagnostics.alignment_spectrum.horizon_energy`).
    """
    return horizon_energy(spectrum, q, n / (lr * steps)) / (2 * n)


def layer_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Group the parameters by the module that owns them directly (one group per layer), in model order."""
    out = {}
    for name, module in model.named_modules():
        own = tuple(f"{name}.{k}" if name else k for k, p in module.named_parameters(recurse=False))
        if own:
            out[name] = own
    return out


def layer_alignment(model: nn.Module, X: object, q: torch.Tensor, dtype: torch.dtype,
                    groups: dict[str, tuple[str, ...]] | None = None, output: OutputSelector = None,
                    total: torch.Tensor | None = None) -> list[dict[str, float | str]]:
    """Share of ``QᵀKQ`` and own residual ``‖(I − P_{K_g})Q‖/‖Q‖`` of every layer's Gram ``K_g = J_gJ_gᵀ``.

    ``Col K_g = Col J_g`` keeps the eigenvalues of ``K_g`` above the rank rule of
    :func:`~diagnostics.engine.precision.rank_rule`; a layer with fewer parameters ``d_g`` than ``nm`` rows is
    decomposed through the SVD of its ``nm × d_g`` Jacobian block (the same rule on the squared singular values),
    which costs ``nm·d_g²`` instead of ``(nm)³``; a Gram of full rank needs its eigenvalues only.

    Parameters
    ----------
    model
        The model (not changed).
    X
        The probe inputs (a tensor, tuple or dict of tensors).
    q
        The alignment target ``Q``, ``(n, m)`` or stacked.
    dtype
        Compute dtype of the Jacobian blocks and Grams.
    groups
        Parameter names per layer (default :func:`layer_groups`).
    output
        The output selector, as :func:`diagnostics.jacobian`'s.
    total
        The Gram ``K = Σ_g K_g`` of all the groups' parameters together at the same ``θ``, in ``dtype`` (a
        tracker's record), or ``None``. With it the Gram of the largest group with more parameters than rows is
        ``K − Σ_{g' ≠ g} K_{g'}``, one Gram fewer. The subtraction adds about ``(G + 1)·eps·λ_max(K)`` for ``G``
        groups, within the rank rule's resolution ``nm·eps·λ_max(K_g)`` (theory/alignment.md#resolution) when
        ``λ_max(K_g) ≥ (G + 1)·‖K‖_F/(nm)``; a group below that is measured on its own.

    Returns
    -------
    list of dict
        ``layer``, ``share``, ``residual``, ``rank`` per group; the shares sum to 1.
    """
    groups = groups if groups is not None else layer_groups(model)
    sizes = dict(model.named_parameters())
    counts = {layer: sum(sizes[k].numel() for k in names) for layer, names in groups.items()}
    rest = max(counts, key=counts.get) if total is not None and groups else None
    rest = rest if rest is not None and counts[rest] >= total.shape[0] else None
    others = torch.zeros_like(total) if rest is not None else None
    quadratics: dict[str, tuple[float, float, int]] = {}
    q64 = q.detach().reshape(-1).to(dtype=torch.float64)
    for layer, names in groups.items():
        if layer == rest:
            continue
        with Measurement(model, X, params=list(names), dtype=dtype, output=output) as job:
            q64 = q64.to(job.fm.device)
            if job.fm.n_params < job.rows:
                J = job.jacobian_columns(job.fm.names)
                quadratics[layer] = _thin_layer(J, q64, dtype)
                K = J @ J.T if others is not None else None
            else:
                K = job.gram()
                quadratics[layer] = _thick_layer(K, q64, dtype)
            if others is not None:
                others += K
    if rest is not None:
        K = total - others
        bound = (len(groups) + 1) * float(torch.linalg.matrix_norm(total.double())) / total.shape[0]
        quadratics[rest] = _thick_layer(K, q64.to(K.device), dtype, floor=bound)
        if quadratics[rest] is None:  # too small a part of K to be told apart from its rounding: measure it
            with Measurement(model, X, params=list(groups[rest]), dtype=dtype, output=output) as job:
                quadratics[rest] = _thick_layer(job.gram(), q64.to(job.fm.device), dtype)
    rows = [{"layer": layer, "quadratic": quadratics[layer][0],
             "residual": math.sqrt(quadratics[layer][1] / float(q64 @ q64)), "rank": quadratics[layer][2]}
            for layer in groups]
    whole = sum(row["quadratic"] for row in rows)
    return [{"layer": r["layer"], "share": r.pop("quadratic") / whole if whole > 0 else math.nan, **r} for r in rows]


def _thick_layer(K: torch.Tensor, q: torch.Tensor, dtype: torch.dtype,
                 floor: float = 0.0) -> tuple[float, float, int] | None:
    """``qᵀKq``, ``‖(I − P)q‖²`` and ``rank K`` of a layer's Gram ``K`` (``nm × nm``), eigenvalues first.

    A layer with more parameters than rows usually has a Gram of full rank under the rank rule: its eigenvalues
    alone (about a fifth of a decomposition's work) then give ``P = I`` and ``‖(I − P)q‖² = 0`` exactly, as the
    decomposition would; only a rank-deficient Gram is decomposed with its eigenvectors. ``None`` when its largest
    eigenvalue is below ``floor`` (a Gram obtained by subtraction that its rounding could swamp).
    """
    K64 = K.detach().to(torch.float64)
    K64 = (K64 + K64.T) / 2
    eigenvalues = torch.linalg.eigvalsh(K64)
    if float(eigenvalues[-1]) < floor:
        return None
    tol, _ = rank_rule(None, float(eigenvalues[-1]), K.shape[0], dtype)
    if bool((eigenvalues > tol).all()):
        return float(q @ K64 @ q), 0.0, K.shape[0]
    spectrum = Spectrum.of(K, source_dtype=dtype)
    return spectrum.quadratic(q), spectrum.outside_norm_sq(q), spectrum.rank


def _thin_layer(J: torch.Tensor, q: torch.Tensor, dtype: torch.dtype) -> tuple[float, float, int]:
    """``qᵀJJᵀq``, ``‖(I − P)q‖²`` and ``rank J`` of a Jacobian block with fewer columns than rows, by its SVD."""
    J64 = J.to(torch.float64)
    U, s, _ = torch.linalg.svd(J64, full_matrices=False)
    tol, _ = rank_rule(None, float(s[0] ** 2) if s.numel() else 0.0, J.shape[0], dtype)
    kept = U[:, s**2 > tol]
    outside = q - kept @ (kept.T @ q)
    return float((J64.T @ q).pow(2).sum()), float(outside @ outside), int(kept.shape[1])
