"""Which training the gradient-descent statements speak of: the premises of a recipe (recipe.md).

The horizon floors and the dynamics linearised at a kernel (``theory/alignment.md#horizon-residual``) describe
plain full-batch gradient descent on ``L = (1/2n)‖f_X − Q‖²``; the linearised loss needs a stable step
``ηλ_max/n ≤ 2`` as well, while a horizon floor speaks of the slow directions whatever the step, with the unstable
part named (:func:`unstable_part`, ``theory/recipe.md#stability``). The gradient-descent rate bound
(``theory/results.md#gradient-descent-rate``) uses no update rule, only the loss and gradient of the whole training
objective at the iterates. :func:`gradient_descent_premises` turns what a caller knows of a recipe into those
premises: observed (met or not), or assumed where nothing was observed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ._arguments import ArrayLike, array, count, flag, nonneg
from .verdict import Premise

__all__ = ["GD_STATEMENTS", "STABLE_STEP", "UnstablePart", "gradient_descent_premises", "unstable_part"]

#: The statements about gradient descent whose premises :func:`gradient_descent_premises` gives.
GD_STATEMENTS = ("horizon", "linearised", "rate")

#: Linearised gradient descent multiplies the residual along an eigenvalue ``λ`` by ``1 − ηλ/n`` per step: it
#: does not grow iff ``ηλ/n ≤ 2`` (``theory/recipe.md#stability``).
STABLE_STEP = 2.0

#: Hyper-parameters of ``torch.optim.SGD`` that make its step something other than ``θ ← θ − η∇L`` when set.
_DEPARTURES = {
    "momentum": "heavy-ball momentum",
    "weight_decay": "weight decay (the gradient of a regularised loss)",
    "maximize": "maximize=True (gradient ascent)",
}


def gradient_descent_premises(
    statement: str,
    optimizer: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    full_batch: bool | None = None,
    squared_loss: bool | None = None,
    step_size: float | None = None,
    lambda_max: float | None = None,
    n: int | None = None,
) -> tuple[Premise, ...]:
    r"""Return the premises under which a gradient-descent statement speaks of a recipe (``theory/recipe.md``).

    ``"horizon"`` (horizon floors) and ``"linearised"`` (the loss of the dynamics linearised at a kernel ``K``) need
    plain gradient steps ``θ ← θ − η∇L`` (no momentum, no adaptive scaling, no weight decay) on the whole training
    set and the squared loss ``L = (1/2n)‖f_X − Q‖²`` whose step is ``η``; ``"linearised"`` needs a stable step
    ``ηλ_max(K)/n ≤ 2`` as well. A horizon floor does not: it speaks of the slow directions (``ηλT/n < 1``), which
    evolve on their own whatever the unstable ones do; the unstable part is named beside it (:func:`unstable_part`,
    ``theory/alignment.md#horizon-residual``). ``"rate"`` (the gradient-descent rate bound) holds for any update
    rule; it needs only that the recorded losses and gradient norms are the squared loss's on the whole training
    set at every iterate.

    A premise is *met* or *not met* when observed and *assumed* (``met=None``) when not: a statement with a premise
    not met is *not applicable*.

    Parameters
    ----------
    statement
        ``"horizon"``, ``"linearised"`` or ``"rate"``.
    optimizer
        The optimiser as ``{"name": type(opt).__name__, **hyper-parameters}`` (the form of a history's
        ``meta["optimizer"]``), or one such mapping per parameter group; ``None``: not known, and plain gradient
        steps are the caller's declaration (assumed). Only ``"SGD"`` without ``momentum``, ``weight_decay`` and
        ``maximize`` is recognised as plain gradient descent, with one ``lr`` over the groups.
    full_batch
        Whether every step's gradient (for ``"rate"``: every recorded loss and gradient) is the whole training
        set's: ``True``/``False`` when observed, ``None`` when not (assumed).
    squared_loss
        Whether the training loss is ``(1/2n)‖f_X − Q‖²`` (the step ``η`` is the step on it): ``False`` for another
        loss (cross-entropy), ``None`` when not observed (assumed).
    step_size
        ``η``; default the optimiser's ``lr``.
    lambda_max, n
        ``λ_max(K)`` of the kernel the statement speaks of and the number of samples ``n``, for the stable-step
        premise of ``"linearised"`` (``None``: not measured, assumed). Not used for ``"horizon"`` and ``"rate"``.

    Returns
    -------
    tuple of Premise
        ``"horizon"``: the update rule, the full batch, the squared loss. ``"linearised"``: those and the stable
        step (its note gives ``ηλ_max/n`` and, when it fails, how fast the top direction grows). ``"rate"``: the
        full batch and the squared loss.
    """
    if statement not in GD_STATEMENTS:
        raise ValueError(f"statement must be one of {GD_STATEMENTS}, got {statement!r}")
    groups = _groups(optimizer)
    batch = _full_batch_premise(statement, None if full_batch is None else flag("full_batch", full_batch))
    loss = Premise("squared loss (1/2n)‖f_X − Q‖², η its step",
                   None if squared_loss is None else flag("squared_loss", squared_loss),
                   "" if squared_loss is not None else "assumed: the training loss is not observed here "
                   "(a mean over the m outputs as well, F.mse_loss, has step 2η/m on it)")
    if statement == "rate":
        return batch, loss
    plain = _update_premise(groups), batch, loss
    if statement == "horizon":
        return plain
    return (*plain, _stability_premise(_step_size(step_size, groups), lambda_max, n))


def _groups(optimizer: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]] | None:
    if optimizer is None:
        return None
    groups = [optimizer] if isinstance(optimizer, Mapping) else list(optimizer)
    if not groups or not all(isinstance(g, Mapping) and "name" in g for g in groups):
        raise ValueError("optimizer must be a mapping with a 'name' (or a non-empty sequence of them)")
    return groups


def _step_size(step_size: float | None, groups: list[Mapping[str, Any]] | None) -> float | None:
    if step_size is not None:
        return nonneg("step_size", step_size)
    lrs = {g["lr"] for g in groups or () if isinstance(g.get("lr"), int | float) and not isinstance(g["lr"], bool)}
    return nonneg("lr", lrs.pop()) if len(lrs) == 1 else None


def _update_premise(groups: list[Mapping[str, Any]] | None) -> Premise:
    name = "plain gradient steps θ ← θ − η∇L"
    if groups is None:
        return Premise(name, None, "assumed: the optimiser is not known here")
    reasons = []
    for g in groups:
        if g["name"] != "SGD":
            reasons.append(f"{g['name']} is not plain gradient descent (an adaptive or other update rule)")
            continue
        reasons += [f"SGD with {what} ({key}={g[key]!r})" for key, what in _DEPARTURES.items() if g.get(key)]
    if len({g.get("lr") for g in groups}) > 1:
        reasons.append("parameter groups with different step sizes")
    if reasons:
        return Premise(name, False, "; ".join(dict.fromkeys(reasons)))
    return Premise(name, True, "torch.optim.SGD without momentum, weight decay or maximize")


def _full_batch_premise(statement: str, full_batch: bool | None) -> Premise:
    if statement == "rate":
        name = "L_k and ‖∇L(θ_k)‖² of the whole training set at every iterate (any update rule)"
    else:
        name = "full batch: every step's gradient is the whole training set's"
    notes = {None: "assumed: the batches are not observed here", True: "", False: "minibatch steps"}
    return Premise(name, full_batch, notes[full_batch])


def _stability_premise(eta: float | None, lambda_max: float | None, n: int | None) -> Premise:
    name = f"stable step ηλ_max/n ≤ {STABLE_STEP:g}"
    if eta is None or lambda_max is None or n is None:
        return Premise(name, None, "assumed: ηλ_max(K)/n not measured here")
    ratio = nonneg("step_size", eta) * nonneg("lambda_max", lambda_max) / count("n", n, 1)
    if ratio <= STABLE_STEP:
        return Premise(name, True, f"ηλ_max/n = {ratio:.4g}")
    return Premise(name, False, f"ηλ_max/n = {ratio:.4g}: linearised gradient descent multiplies the top direction "
                                f"by {ratio - 1:.3g} per step, and every direction with ηλ/n > 2 diverges instead "
                                "of being fitted")


@dataclass(frozen=True)
class UnstablePart:
    """The eigen-directions of ``K`` that gradient descent with step ``η`` does not fit: ``ηλ/n > 2``.

    Linearised gradient descent multiplies the component along such a direction by ``1 − ηλ/n < −1`` per step
    (``theory/recipe.md#stability``), so it grows instead of being fitted; the others evolve on their own.

    Attributes
    ----------
    step_ratio
        ``ηλ_max/n``.
    directions
        How many kept eigen-directions have ``ηλ/n > 2``.
    share
        Their share of ``‖q‖²``.
    complete
        Whether every eigenvalue above ``2n/η`` was among those measured; ``False`` when only the top eigenpairs
        were computed (the matrix-free path) and all of them are unstable: ``directions`` and ``share`` are then
        lower bounds.
    """

    step_ratio: float
    directions: int
    share: float
    complete: bool = True

    @property
    def growth(self) -> float:
        """``ηλ_max/n − 1``: the factor by which linearised GD multiplies the top direction per step (0 if none)."""
        return self.step_ratio - 1 if self.directions else 0.0

    def __str__(self) -> str:
        if not self.directions:
            return f"no unstable direction (ηλ_max/n = {self.step_ratio:.4g} ≤ {STABLE_STEP:g})"
        least = "" if self.complete else "at least "
        plural = "s" if self.directions > 1 or not self.complete else ""
        return (f"unstable part: {least}{self.directions} direction{plural} with ηλ/n > {STABLE_STEP:g} "
                f"({least}{100 * self.share:.3g} % of ‖Q‖²) not fitted: linearised gradient descent multiplies the top "
                f"one by {self.growth:.4g} per step (ηλ_max/n = {self.step_ratio:.4g})")

    def to_dict(self) -> dict:
        """Plain-Python dictionary (with ``growth``)."""
        return {**asdict(self), "growth": self.growth}


def unstable_part(step_size: float, n: int, eigenvalues: ArrayLike, shares: ArrayLike, *, rank_tol: float = 0.0,
                  complete: bool = True) -> UnstablePart:
    r"""Return the part of ``q`` gradient descent with step ``η`` grows instead of fitting (``recipe.md#stability``).

    Along an eigen-direction of ``K`` with ``ηλ/n > 2`` linearised gradient descent multiplies the residual by
    ``|1 − ηλ/n| > 1`` per step; the directions the rank rule discards (``λ ≤ rank_tol``) are not counted (a
    horizon floor counts them as unfitted already).

    Parameters
    ----------
    step_size, n
        ``η`` and the number of samples.
    eigenvalues
        The eigenvalues of ``K`` in descending order (all of them, or the top ones: see ``complete``).
    shares
        The share ``(u_iᵀq)²/‖q‖²`` of each of those eigen-directions.
    rank_tol
        The rank rule's tolerance: directions at or below it are not counted.
    complete
        Whether ``eigenvalues`` is the whole spectrum; when it is not and its last entry is unstable too, the
        result is marked as lower bounds.

    Returns
    -------
    UnstablePart
    """
    eta, n = nonneg("step_size", step_size), count("n", n, 1)
    lam = array("eigenvalues", eigenvalues)
    share = array("shares", shares, nonneg=True)
    if share.shape != lam.shape:
        raise ValueError(f"shares has {share.shape[0]} entries for {lam.shape[0]} eigenvalues")
    ratios = eta * lam / n
    unstable = (ratios > STABLE_STEP) & (lam > nonneg("rank_tol", rank_tol))
    whole = flag("complete", complete) or not unstable[-1]
    return UnstablePart(float(ratios[0]), int(unstable.sum()), float(share[unstable].sum()), bool(whole))
