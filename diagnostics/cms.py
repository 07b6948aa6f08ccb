"""The common model structure assumption A1: ``f(x, θ) = ∂f(x,θ)/∂θ · R(θ)`` (``theory/cms.md#a1``).

``check_cms(model, inputs)`` runs the three tests of ``theory/cms.md#how-to-test-a1`` and lets
:func:`theory.cms_assessment` judge them:

1. *candidate identity*: candidates ``R`` are looked for in what the function does, not in the classes
   of its modules. For each parameter tensor ``p`` the engine measures ``v_p = J_p θ_p`` (its Jacobian
   applied to its own value, reverse mode only); ``f`` is linear in a set ``S`` of tensors exactly when
   ``f = Σ_{p∈S} v_p``, and then ``R = θ_S`` (zero elsewhere) satisfies ``f = J R``. The candidates are
   ``R = (c_p θ_p)_p``: all tensors scaled by ``1/H`` (a positively homogeneous network of degree ``H``),
   the tensors of one module (an affine output layer, whatever computes it: ``nn.Linear``,
   ``F.linear`` on raw parameters, a tied embedding, a parametrisation), and the least-squares ``c``
   over all tensors. ``c`` is fitted on the first half of the inputs and its relative error
   ``‖f − J R‖/‖f‖`` measured on the second half and on perturbed copies of it.
2. *necessary data-level condition*: ``‖(I−P)f_X‖/‖f_X‖`` (``f_X ∈ Col J``); a failure refutes A1.
3. *input independence*: the least-norm ``R_A = J_A⁺ f_A`` fitted on the first half, tested on the
   second: ``‖f_B − K_BA K_AA⁺ f_A‖/‖f_B‖``; a failure refutes A1 only when ``rank J_A = rank [J_A; J_B]``.

A1 *holds* when a candidate passes on the fresh and perturbed inputs, is *refuted* only by test 2 or a
conclusive test 3, and is *not established* otherwise (another ``R`` than the candidates may work).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

import theory

from .alignment_spectrum import measured_bounds
from .engine import inputs as _inputs
from .engine import precision
from .engine.functional import ParamSelector
from .engine.manifest import MeasurementManifest
from .engine.measurement import Measurement
from .engine.spectral import Spectrum
from .errors import DiagnosticsError

__all__ = ["CMSReport", "check_cms"]

#: Input sets of test 1: the half that chooses ``c``, the fresh half, perturbed copies of the fresh half.
SETS = ("fit", "fresh", "perturbed")


@dataclass
class CMSReport:
    """Result of :func:`check_cms`.

    Attributes
    ----------
    verdict
        :func:`theory.cms_assessment`: *holds* (a candidate ``R`` is witnessed on fresh and perturbed
        inputs), *refuted* (by test 2 or a conclusive test 3, named in ``verdict.details['refuted_by']``)
        or *not established*.
    kind
        The candidate that passed (``None`` if none did).
    R
        That candidate's value at ``θ``, per parameter name.
    degree
        Fitted homogeneity degree ``H`` (``⟨∂f/∂θ, θ⟩ = H f``).
    candidates
        Per candidate: ``what`` it is, relative errors ``fit``, ``fresh``, ``perturbed`` (test 1), ``passes``.
    column_space_residual
        Test 2: ``‖(I−P)f_X‖/‖f_X‖`` on all inputs.
    transfer_error
        Test 3: ``‖f_B − J_B J_A⁺ f_A‖/‖f_B‖``.
    transfer_conclusive
        ``rank J_A = rank [J_A; J_B]``: only then does a failed transfer refute A1 (``theory/cms.md``).
    manifest
        What was measured (:class:`~diagnostics.engine.manifest.MeasurementManifest`).
    """

    verdict: theory.Verdict
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

    @property
    def holds(self) -> bool:
        """A1 holds: a candidate ``R`` is witnessed."""
        return self.verdict.holds

    @property
    def status(self) -> str:
        """The verdict's word: ``"holds"``, ``"refuted"`` or ``"not established"``."""
        return self.verdict.status

    def to_dict(self) -> dict:
        """Plain-Python dictionary; ``R`` is summarised by its norm per parameter."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("R", "manifest", "verdict")}
        out["status"] = self.status
        out["verdict"] = self.verdict.to_dict()
        out["R_norms"] = {k: float(v.norm()) for k, v in (self.R or {}).items()}
        out["manifest"] = self.manifest.to_dict() if self.manifest is not None else None
        return out

    def __str__(self) -> str:
        details = self.verdict.details
        if self.verdict.holds:
            headline = f"holds ({self.candidates[self.kind]['what']})"
        elif self.verdict.refuted:
            headline = f"refuted by {details['refuted_by']}"
        else:
            headline = f"not established ({details.get('reason', '')})"
        lines = [f"Common model structure A1 (f = J R): {headline}"]
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
        if not self.candidates:
            lines.append("    no candidate: the outputs are not linear in any set of parameter tensors tried")
        lines.append(f"  test 2, ‖(I−P) f_X‖/‖f_X‖ = {self.column_space_residual:.2e} "
                     f"(necessary: a residual shown to exceed {details['data_tol']:.1e} refutes A1, unless a witness "
                     "holds)")
        if details.get("data_undecided"):
            lines.append(f"    not shown: {details['data_undecided']}")
        note = "conclusive" if self.transfer_conclusive else "inconclusive: rank J_A < rank [J_A; J_B]"
        lines.append(f"  test 3, least-norm R fitted on half, error on the other = {self.transfer_error:.2e} ({note})")
        if details.get("disagreement"):
            lines.append(f"  note: {details['disagreement']}")
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
    strategy: str = "auto",
    perturbation: float = 0.1,
    rtol: float | None = None,
    seed: int = 0,
    memory_budget: int | None = None,
) -> CMSReport:
    """Test the common model structure assumption A1 on ``inputs`` (``theory/cms.md``).

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
        Relative error under which the identity holds; default ``max(1000·eps, 1e-10)`` of the dtype.
    dtype
        Compute dtype; default as in :func:`~diagnostics.check_alignment` (float64 on the CPU).
    params, mode, output, strategy, memory_budget
        As in :func:`diagnostics.jacobian`. Only reverse-mode derivatives are used.
    """
    settings = {"params": params, "mode": mode, "output": output, "dtype": dtype or precision.verdict_dtype(model),
                "strategy": strategy, "memory_budget": memory_budget}
    with Measurement(model, inputs, **settings) as job:
        fm, n = job.fm, job.n
        if n < 2:
            raise DiagnosticsError("check_cms needs at least 2 samples: half to fit R, half to test it")
        rtol = precision.cms_identity_rtol(fm.dtype) if rtol is None else float(rtol)
        half = n // 2
        theta = fm.params
        f_all = job.outputs()
        K, V_all = job.gram_and_contractions(theta)
        x_fresh = _inputs.take(job.x, slice(half, n))
        manifest = MeasurementManifest.of(job, job.error(K))
    with Measurement(model, _perturb(x_fresh, perturbation, seed), **settings) as noisy:
        f_noisy = noisy.outputs()
        V_noisy = noisy.contractions(noisy.fm.params)
    m = f_all.shape[1]
    f = {"fit": f_all[:half].reshape(-1), "fresh": f_all[half:].reshape(-1), "perturbed": f_noisy.reshape(-1)}
    V = {"fit": V_all[: half * m], "fresh": V_all[half * m :], "perturbed": V_noisy}
    if float(f["fit"].norm()) == 0:
        raise DiagnosticsError("the model's outputs are all zero on these inputs: A1 holds trivially")
    degree, coefficients = _candidate_coefficients(fm.names, V["fit"], f["fit"])
    candidates: dict[str, dict] = {}
    for name, (what, c) in coefficients.items():
        errors = {s: _relative_error(f[s], V[s] @ c) for s in SETS}
        candidates[name] = {"what": what, **errors, "passes": max(errors.values()) <= rtol}
    kind = next((k for k, c in candidates.items() if c["passes"]), None)
    col_res, col_bounds, transfer, rank_fit, rank_union = _data_level_tests(K, f_all, half, m, fm.dtype, fm.n_params)
    best = min(candidates.values(), key=lambda c: max(c["fresh"], c["perturbed"]), default=None)
    chosen = candidates[kind] if kind is not None else best
    verdict = theory.cms_assessment(
        None if chosen is None else max(chosen["fresh"], chosen["perturbed"]), col_res, transfer, rank_fit, rank_union,
        tol=rtol, data_tol=precision.RESIDUAL_TOL, data_bounds=col_bounds, rank_bound=min(K.shape[0], fm.n_params),
    )
    R = None
    if kind is not None and verdict.holds:
        c = coefficients[kind][1]
        R = {k: c[i].item() * theta[k] for i, k in enumerate(fm.names)}
    return CMSReport(
        verdict=verdict,
        kind=kind if verdict.holds else None,
        rtol=rtol,
        degree=degree,
        candidates=candidates,
        column_space_residual=col_res,
        transfer_error=transfer,
        transfer_conclusive=rank_fit == rank_union,
        n_fit=half,
        n_fresh=n - half,
        n_params=fm.n_params,
        R=R,
        manifest=manifest,
    )


def _candidate_coefficients(names: tuple[str, ...], V: torch.Tensor, f: torch.Tensor
                            ) -> tuple[float, dict[str, tuple[str, torch.Tensor]]]:
    """Candidate ``c`` (``R = (c_p θ_p)_p``), simplest first: homogeneous, one module's tensors, least squares.

    Returns the fitted homogeneity degree ``H = ⟨Σ_p v_p, f⟩/‖f‖²`` and the candidates by name.
    """
    P = len(names)
    f_sq = float(f @ f)
    degree = float(V.sum(1) @ f) / f_sq
    out: dict[str, tuple[str, torch.Tensor]] = {}
    if abs(degree) > 1e-12:
        out["homogeneous"] = (f"R = θ/H, H = {degree:.6g}",
                              torch.full((P,), 1.0 / degree, dtype=V.dtype, device=V.device))
    owners: dict[str, list[int]] = {}
    for i, k in enumerate(names):
        owners.setdefault(k.rpartition(".")[0], []).append(i)
    best = None
    for owner, idx in owners.items():
        c = torch.zeros(P, dtype=V.dtype, device=V.device)
        c[idx] = 1.0
        err = _relative_error(f, V @ c)
        if best is None or err < best[0]:
            best = (err, owner, c)
    if best is not None:
        label = f"{best[1]!r}" if best[1] else "the model's own parameters"
        members = ", ".join(names[i] for i in torch.nonzero(best[2]).flatten().tolist())
        out["linear-in"] = (f"R = the coordinates of {label} ({members}), zero elsewhere", best[2])
    c = torch.linalg.lstsq(V.cpu(), f.cpu()[:, None], driver="gelsd").solution[:, 0].to(V)
    out["least-squares"] = (f"R = (c_p θ_p), c fitted over {P} tensors", c)
    return degree, out


def _relative_error(f: torch.Tensor, fitted: torch.Tensor) -> float:
    """``‖f − fitted‖/‖f‖``."""
    norm = float(f.norm())
    return float((f - fitted).norm()) / norm if norm > 0 else math.inf


def _perturb(x: _inputs.Inputs, scale: float, seed: int) -> _inputs.Inputs:
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def noisy(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        noise = torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
        return t + scale * t.std() * noise

    return _inputs.map_inputs(noisy, x)


def _data_level_tests(K: torch.Tensor, f: torch.Tensor, half: int, m: int, dtype: torch.dtype, n_params: int
                      ) -> tuple[float, theory.ResidualBounds | None, float, int, int]:
    """Test 2 (``f_X ∈ Col J``) with the bounds of its exact residual, test 3, ``rank J_A`` and ``rank [J_A; J_B]``."""
    f = f.to(torch.float64).reshape(-1).cpu()
    whole = Spectrum.of(K, source_dtype=dtype)
    col_res = math.sqrt(whole.outside_norm_sq(f) / float(f @ f))
    col_bounds = measured_bounds(whole, f, col_res, n_params, dtype)
    a = half * m
    K64 = K.to(torch.float64).cpu()
    fit = Spectrum.of(K64[:a, :a], rank_tol=whole.rank_tol)  # one tolerance for both ranks
    predicted = K64[a:, :a] @ fit.pinv_apply(f[:a]).cpu()
    transfer = float((f[a:] - predicted).norm() / f[a:].norm())
    return col_res, col_bounds, transfer, fit.rank, whole.rank
