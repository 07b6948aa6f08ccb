"""The common model structure assumption A1: ``f(x, θ) = ∂f(x,θ)/∂θ · R(θ)`` (THEORY §2).

``check_cms(model, inputs)`` runs the three tests of THEORY §2 and reports all of them:

1. *candidate identity*: for each candidate ``R`` (``"homogeneous"``: ``R = θ/H`` with the degree
   ``H`` fitted by Euler's identity ``⟨∂f/∂θ, θ⟩ = H f``; ``"affine-output"``: the coordinates of one
   linear/convolutional layer's weight and bias, zeros elsewhere) the relative error
   ``‖f_x − J_x R‖/‖f_x‖`` on the inputs used to choose ``R``, on fresh inputs and on perturbed
   fresh inputs. ``J_x R`` is one forward-mode product (``torch.func.jvp``); no Jacobian is formed.
2. *necessary data-level condition*: ``‖(I−P)f_X‖/‖f_X‖`` (``f_X ∈ Col(J)``).
3. *input independence*: the least-norm ``R_A = J_A⁺ f_A`` fitted on the first half, tested on the
   second: ``‖f_B − J_B R_A‖/‖f_B‖ = ‖f_B − K_BA K_AA⁺ f_A‖/‖f_B‖``. A small value confirms one ``R``
   serves all inputs; a large one is inconclusive when ``d`` exceeds the fitted rows, because
   ``R_A`` is only determined modulo the null space of ``J_A`` (see ``theory/cms.md``).

The verdict ``holds`` rests on test 1: A1 holds when some candidate reproduces the outputs to
``rtol`` on fresh and perturbed inputs. Tests 2 and 3 are evidence, reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import jvp

from .engine import inputs as _inputs
from .engine import precision
from .engine.functional import ParamSelector
from .engine.manifest import MeasurementManifest
from .engine.measurement import Measurement
from .engine.spectral import Spectrum
from .errors import DiagnosticsError

__all__ = ["CMSReport", "check_cms"]


@dataclass
class CMSReport:
    """Result of :func:`check_cms`.

    Attributes
    ----------
    holds
        Some candidate ``R`` satisfies ``f = J R`` to ``rtol`` on fit, fresh and perturbed inputs.
    kind
        ``"homogeneous"``, ``"affine-output"`` or ``None``.
    R
        The candidate map's value at ``θ``, per parameter name (``None`` if no candidate holds).
    degree
        Fitted homogeneity degree ``H`` (``R = θ/H``).
    candidates
        Per candidate: relative errors ``fit``, ``fresh``, ``perturbed`` (test 1) and what it is.
    column_space_residual
        Test 2: ``‖(I−P)f_X‖/‖f_X‖`` on all inputs.
    transfer_error
        Test 3: ``‖f_B − J_B J_A⁺ f_A‖/‖f_B‖``.
    transfer_conclusive
        ``rank J_A = rank [J_A; J_B]``: only then does a failed transfer refute A1 (theory/cms.md).
    manifest
        What was measured (:class:`~diagnostics.engine.manifest.MeasurementManifest`).
    """

    holds: bool
    kind: str | None
    rtol: float
    degree: float
    candidates: dict[str, dict]
    column_space_residual: float
    transfer_error: float
    transfer_conclusive: bool
    n_fit: int
    n_fresh: int
    n_params: int
    R: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    manifest: MeasurementManifest | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """Plain-Python dictionary; ``R`` is summarised by its norm per parameter."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("R", "manifest")}
        out["R_norms"] = {k: float(v.norm()) for k, v in (self.R or {}).items()}
        out["manifest"] = self.manifest.to_dict() if self.manifest is not None else None
        return out

    def __str__(self) -> str:
        verdict = f"HOLDS ({self.kind})" if self.holds else "VIOLATED (no candidate R reproduces f)"
        lines = [f"Common model structure A1 (f = J R): {verdict}"]
        lines.append(
            f"  inputs: {self.n_fit} to choose R, {self.n_fresh} fresh (+ perturbed copies); "
            f"d={self.n_params:,}; tolerance {self.rtol:.1e}"
        )
        lines.append("  test 1, candidate identity ‖f − J R‖/‖f‖  (fit / fresh / perturbed):")
        for name, c in self.candidates.items():
            mark = "✓" if c["passes"] else "✗"
            lines.append(
                f"    {mark} {name:<14} {c['fit']:.2e} / {c['fresh']:.2e} / {c['perturbed']:.2e}   {c['what']}"
            )
        lines.append(f"  test 2, ‖(I−P) f_X‖/‖f_X‖ = {self.column_space_residual:.2e} (necessary, ≈0 expected)")
        note = "" if self.transfer_conclusive else " (inconclusive: rank J_A < rank [J_A; J_B])"
        lines.append(f"  test 3, least-norm R fitted on half, error on the other = {self.transfer_error:.2e}{note}")
        if self.manifest is not None:
            lines.append(str(self.manifest))
        return "\n".join(lines)


def check_cms(
    model: nn.Module,
    inputs: object,
    *,
    params: ParamSelector = None,
    mode: str = "eval",
    output: _inputs.OutputSelector = None,
    dtype: torch.dtype | None = None,
    perturbation: float = 0.1,
    rtol: float | None = None,
    seed: int = 0,
    memory_budget: int | None = None,
) -> CMSReport:
    """Test the common model structure assumption A1 on ``inputs`` (THEORY §2).

    Parameters
    ----------
    model
        Any ``nn.Module``; never modified.
    inputs
        At least 2 samples (tensor, tuple or dict of tensors): the first half chooses ``R``,
        the second half is the fresh set.
    perturbation
        Relative size of the Gaussian noise added to the fresh inputs for the perturbed set.
    rtol
        Relative error under which the identity holds; default ``max(1000·eps, 1e-10)``.
    params, mode, output, dtype, memory_budget
        As in :func:`diagnostics.jacobian`.
    """
    with Measurement(model, inputs, params=params, mode=mode, output=output, dtype=dtype,
                     memory_budget=memory_budget) as job:
        fm, n = job.fm, job.n
        if n < 2:
            raise DiagnosticsError("check_cms needs at least 2 samples: half to fit R, half to test it")
        if rtol is None:
            rtol = precision.cms_identity_rtol(fm.dtype)
        half = n // 2
        sets = {
            "fit": _inputs.take(job.x, slice(0, half)),
            "fresh": _inputs.take(job.x, slice(half, n)),
        }
        sets["perturbed"] = _perturb(sets["fresh"], perturbation, seed)

        def identity_error(direction: dict[str, torch.Tensor], x) -> float:
            f, Jr = jvp(lambda p: fm(p, x), (fm.params,), (direction,))
            return float((f - Jr).norm() / f.norm())

        theta = fm.params
        f_fit, J_theta = jvp(lambda p: fm(p, sets["fit"]), (theta,), (theta,))
        f_sq = float((f_fit**2).sum())
        if f_sq == 0:
            raise DiagnosticsError("the model's outputs are all zero on these inputs: A1 holds trivially")
        degree = float((J_theta * f_fit).sum()) / f_sq
        candidates: dict[str, dict] = {}
        Rs: dict[str, dict[str, torch.Tensor]] = {}
        if abs(degree) > 1e-12:
            Rs["homogeneous"] = {k: v / degree for k, v in theta.items()}
            candidates["homogeneous"] = {"what": f"R = θ/H, H = {degree:.6g}"}
        layer = _best_affine_layer(fm, sets["fit"], identity_error)
        if layer is not None:
            Rs["affine-output"] = {
                k: (theta[k] if k in layer[1] else torch.zeros_like(v)) for k, v in theta.items()
            }
            candidates["affine-output"] = {"what": f"R = weight and bias of {layer[0]!r}"}
        for name, R in Rs.items():
            errs = {s: identity_error(R, x) for s, x in sets.items()}
            candidates[name].update(errs, passes=max(errs.values()) <= rtol)
        K = job.gram()
        with torch.no_grad():
            f_all = fm(fm.params, job.x)
    kind = next((k for k in ("homogeneous", "affine-output") if k in candidates and candidates[k]["passes"]), None)
    col_res, transfer, conclusive = _data_level_tests(K, f_all, half, job.m, fm.dtype)
    return CMSReport(
        holds=kind is not None,
        kind=kind,
        rtol=float(rtol),
        degree=degree,
        candidates=candidates,
        column_space_residual=col_res,
        transfer_error=transfer,
        transfer_conclusive=conclusive,
        n_fit=half,
        n_fresh=n - half,
        n_params=fm.n_params,
        R=Rs.get(kind) if kind else None,
        manifest=MeasurementManifest.build(job.fm, job.x, strategy=job.strategy, structured=job.structured),
    )


def _perturb(x: _inputs.Inputs, scale: float, seed: int) -> _inputs.Inputs:
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def noisy(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        noise = torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
        return t + scale * t.std() * noise

    return _inputs.map_inputs(noisy, x)


def _best_affine_layer(fm, x, identity_error) -> tuple[str, tuple[str, ...]] | None:
    """Find the measured layer with a ``weight`` whose coordinates best satisfy ``f = J R`` on ``x``."""
    best = None
    for mod_name, mod in reversed(list(fm.module.named_modules())):  # the output layer wins ties
        prefix = f"{mod_name}." if mod_name else ""
        own = tuple(f"{prefix}{k}" for k in ("weight", "bias") if f"{prefix}{k}" in fm.params)
        layer_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Bilinear)
        if not any(k.endswith("weight") for k in own) or not isinstance(mod, layer_types):
            continue
        direction = {k: (v if k in own else torch.zeros_like(v)) for k, v in fm.params.items()}
        err = identity_error(direction, x)
        if best is None or err < best[0]:
            best = (err, mod_name, own)
    return None if best is None else (best[1], best[2])


def _data_level_tests(K: torch.Tensor, f: torch.Tensor, half: int, m: int, dtype) -> tuple[float, float, bool]:
    """Test 2 (``f_X ∈ Col J``), test 3 (least-norm transfer) and whether test 3 is conclusive."""
    f = f.to(torch.float64).reshape(-1).cpu()
    whole = Spectrum.of(K, source_dtype=dtype)
    col_res = math.sqrt(whole.outside_norm_sq(f) / float(f @ f))
    a = half * m
    K64 = K.to(torch.float64).cpu()
    fit = Spectrum.of(K64[:a, :a], rank_tol=whole.rank_tol)  # one tolerance for both ranks
    predicted = K64[a:, :a] @ fit.pinv_apply(f[:a]).cpu()
    transfer = float((f[a:] - predicted).norm() / f[a:].norm())
    return col_res, transfer, fit.rank == whole.rank
