"""The training wrapper that switches to the augmented model at ``τ`` and records every step after it.

See :mod:`diagnostics.aligned` for the construction and theory/application.md for the guarantee.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pandas as pd
import torch
from scipy.sparse.linalg import svds
from torch import nn

import theory

from ..engine import inputs as _inputs
from ..engine import memory, precision
from ..engine.jacobian import jacobian
from ..errors import DiagnosticsError, UnsupportedModelError, renamed_argument
from ..targets import Targets
from .features import FEATURE_MAPS, AugmentedModel, FrozenFeatures, RandomFourierFeatures
from .guarantee import HISTORY_COLUMNS, StepRecord, Trajectory, scale_for_loss
from .head import find_head
from .reports import GuaranteeReport, SwitchReport
from .solve import AlignmentSolution, Block, solve_blocks

__all__ = ["COEFFICIENTS", "AlignedTraining"]

COEFFICIENTS = ("full", "rank-one")
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]

_CHUNK = 1024  # samples per forward pass when features are computed on the whole training set


class AlignedTraining:
    """Wrap a model and an optimiser so that training keeps D1 by construction from ``switch_step`` on.

    Keep your own training loop; call the model through :attr:`model` and the optimiser through
    :attr:`optimizer` (both change at the switch), and call :meth:`step` once per iteration, either
    with a closure (it then takes the optimiser step) or after your own ``optimizer.step()``::

        trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.05),
                                  train_data=(X, y), loss="ce", switch_step=500)
        for _ in range(1000):
            def closure():
                trainer.optimizer.zero_grad()
                loss = F.cross_entropy(trainer.model(X), y)
                loss.backward()
                return loss
            trainer.step(closure)
        print(trainer.guarantee()); trainer.history()   # pandas DataFrame

    Parameters
    ----------
    model
        Any ``nn.Module`` whose output is an affine output layer ``head`` applied once, ``f = W h + b``.
    optimizer
        A ``torch.optim`` optimiser over ``model``'s parameters (at ``τ`` the new coefficients join it as a
        param group with the head's hyper-parameters, so its state is kept) or a factory
        ``params -> optimiser`` (called on the model's parameters now and on model + coefficients at
        ``τ``, with fresh state).
    train_data
        The training set, ``(X, Y)`` or a map-style ``Dataset``/``DataLoader`` of ``(x, y)``: D1 and ``ν`` are
        computed on all of it. Labels (class indices) give one-hot ``Y`` for mse.
    switch_step
        ``τ``: the switch happens after this many optimiser steps (0: now).
    loss
        ``"mse"`` (the user minimises a multiple of ``‖f̃_X − Y‖²``) or ``"ce"`` (mean cross-entropy).
    feature_map
        ``"tangent"`` or ``"penultimate"``.
    coefficients
        ``"full"`` or ``"rank-one"``.
    tangent_scale
        ``α`` of the tangent map ``Ψ = α J_x(θ_τ)``: a positive number, or ``"head"`` (default) for
        ``α = sqrt(λ_max(ΦΦᵀ)/λ_max(JJᵀ))`` with ``Φ`` the output layer's columns of ``J``.
    head
        Module name of the affine output layer; default: the last ``nn.Linear`` called, checked to
        produce the model's output and to be linear in its weight and bias.
    enlarge
        Append random features of ``h(x; θ_τ)`` while D1 for the frozen block is not shown to hold (refuted or
        not established), doubling their number until it holds (up to ``max_random_features``).
    residual_tol
        Residual tolerance of D1 for the frozen block; default the question's,
        :data:`~diagnostics.engine.precision.RESIDUAL_TOL` ``= sqrt(eps(float64))``, in every dtype. The dtype decides
        how well the block is known: the check covers every block within the rounding of its recomputation in the
        model's dtype (``theory/application.md#d1-for-the-frozen-block``).
    full_batch
        Declare that every step uses the whole training set (the recorded loss is then the training loss). With a
        closure this is observed: the closure's loss is compared with the training loss at the same parameters
        (one extra forward pass per step), and a mismatch is a departure; after the user's own step it cannot be
        observed and the guarantee lists it as assumed.
    target_loss
        For ce: the distance is recorded to ``x* = (0, cν₀)`` with ``L(cQ₀) = target_loss`` (the distance is
        non-increasing only while ``L ≥ L(cQ₀)``, ``theory/application.md``).
    max_random_features
        Largest number of random features tried (default ``4n``).
    memory_budget
        Bytes the check at ``τ`` may use (default: half of what is available); a block that would not fit is
        refused before it is allocated.
    seed
        Seed of the random features.
    tol
        Former name of ``residual_tol`` (deprecated).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | OptimizerFactory,
        *,
        train_data: object,
        switch_step: int,
        loss: str = "mse",
        feature_map: str = "penultimate",
        coefficients: str = "full",
        tangent_scale: float | str = "head",
        head: str | None = None,
        enlarge: bool = True,
        residual_tol: float | None = None,
        full_batch: bool = False,
        target_loss: float = 1e-3,
        max_random_features: int | None = None,
        memory_budget: int | None = None,
        seed: int = 0,
        tol: float | None = None,
    ) -> None:
        if feature_map not in FEATURE_MAPS:
            raise DiagnosticsError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        if coefficients not in COEFFICIENTS:
            raise DiagnosticsError(f"coefficients must be one of {COEFFICIENTS}, got {coefficients!r}")
        numeric = isinstance(tangent_scale, int | float) and not isinstance(tangent_scale, bool)
        if tangent_scale != "head" and not (numeric and tangent_scale > 0):
            raise DiagnosticsError(f"tangent_scale must be 'head' or a positive number, got {tangent_scale!r}")
        if isinstance(switch_step, bool) or not isinstance(switch_step, int) or switch_step < 0:
            raise DiagnosticsError(f"switch_step must be a non-negative integer, got {switch_step!r}")
        if not 0 < target_loss:
            raise DiagnosticsError(f"target_loss must be positive, got {target_loss}")
        self.base_model = model
        self.feature_map = feature_map
        self.coefficients = coefficients
        self.tangent_scale = tangent_scale
        self.enlarge = enlarge
        self.full_batch = full_batch
        self.target_loss = float(target_loss)
        self.seed = seed
        self.memory_budget = memory_budget
        self.switch_step = switch_step
        X, T = _inputs.probe_data(train_data, None, 0)
        self._X = _inputs.normalise_inputs(X)
        self._n = _inputs.batch_size(self._X)
        self.head = find_head(model, _inputs.take(self._X, slice(0, 4)), head,
                               need_features=feature_map == "penultimate" or enlarge)
        head_module = model.get_submodule(self.head)
        self._m = head_module.out_features
        self.targets = Targets.build(T, self._n, self._m, loss)
        self.loss = loss
        residual_tol = renamed_argument(residual_tol, tol, "tol", "residual_tol")
        self.residual_tol = float(residual_tol) if residual_tol is not None else precision.RESIDUAL_TOL
        self.max_random_features = max_random_features or 4 * self._n
        self._factory = None if isinstance(optimizer, torch.optim.Optimizer) else optimizer
        self._optimizer = optimizer if self._factory is None else self._factory(list(model.parameters()))
        self._omega = list(head_module.parameters())
        self._group_of(self._omega[0])  # refuse now if the optimiser does not train the output layer
        self.iteration = 0
        self.augmented: AugmentedModel | None = None
        self.switch_report: SwitchReport | None = None
        self._trajectory: Trajectory | None = None
        if switch_step == 0:
            self.switch()

    # -- what the training loop uses ---------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The model to train and predict with: the base model before ``τ``, the augmented one after."""
        return self.augmented if self.augmented is not None else self.base_model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimiser in use (after ``τ`` it also updates the coefficients)."""
        return self._optimizer

    @property
    def switched(self) -> bool:
        """Whether ``τ`` has passed."""
        return self.augmented is not None

    def step(
        self, closure: Callable[[], torch.Tensor] | None = None, *, loss: float | None = None
    ) -> float | None:
        """One training iteration.

        With ``closure`` (zero the gradients, compute the loss, ``backward()``, return the loss), take the
        optimiser step and return the loss (a float). Without it, call this after your own
        ``optimizer.step()``, passing the loss of that step as ``loss=`` so it is recorded (the gradients of the
        step must still be in ``.grad``). After ``τ`` every step is recorded; at ``τ`` the switch happens.
        """
        if closure is not None and loss is not None:
            raise DiagnosticsError("pass either a closure or loss=, not both")
        if self.switched:
            value = self._record_step(closure, loss)
        elif closure is not None:
            value = _as_float(self._optimizer.step(closure))
        else:
            value = None if loss is None else _as_float(loss)
        self.iteration += 1
        if not self.switched and self.iteration >= self.switch_step:
            self.switch()
        return value

    # -- the switch -----------------------------------------------------------------------------
    def switch(self) -> SwitchReport:
        """Build ``Ψ`` from a frozen copy, check D1 (enlarging if needed), compute ``ν`` and augment."""
        if self.switched:
            raise DiagnosticsError("the switch has already happened")
        start = time.perf_counter()
        like = next(self.base_model.parameters())
        frozen = FrozenFeatures(self.base_model, self.feature_map, self.head)
        x = _inputs.to(self._X, like.device, like.dtype)
        Q0 = self.targets.Q.to(device=like.device, dtype=torch.float64)
        tangent = None
        budget = memory.resolve_budget(self.memory_budget, like.device)
        if self.feature_map == "tangent":
            d = sum(p.numel() for p in frozen.frozen.parameters())
            _require_block_memory(self._n * self._m, d, budget, "the tangent block J(θ_τ)")
            tangent = jacobian(frozen.frozen, x, mode="eval", memory_budget=budget).to(torch.float64)
            frozen.tangent_scale = self._scale_of(tangent, frozen)
            tangent.mul_(frozen.tangent_scale)
        h = _chunked(frozen.penultimate, x, self._n) if frozen.n_features or self.enlarge else None
        features = frozen.features_from(h).to(torch.float64) if frozen.n_features else None
        tangent_block = Block(tangent) if tangent is not None else None
        solution = solve_blocks(Q0, Block(features) if features is not None else None, tangent_block, like.dtype)
        d1 = self._d1(solution)
        residual_before, enlargements = solution.effective_residual, []
        if not d1.holds and self.enlarge:
            amplitude = math.sqrt(float((h.double() ** 2).sum()) / self._n + 1.0)  # RMS norm of [h, 1]
            # twice the counting minimum (S1): at the minimum Ψ_X is nearly square and ν is ill-conditioned
            # (digits ResNet, penultimate map: ‖ν‖² = 3540 with 1,289 random features, 3.9 with 2,576)
            width = 2 * max(1, math.ceil((self._n * self._m - solution.rank) / self._m))
            base_features = frozen.n_features  # before any random feature
            while True:
                width = min(width, self.max_random_features)
                _require_block_memory(self._n, base_features + width, budget,
                                      f"the feature block with {width:,} random features")
                frozen.random = RandomFourierFeatures.draw(width, h, amplitude, self.seed)
                features = frozen.features_from(h).to(torch.float64)
                solution = solve_blocks(Q0, Block(features), tangent_block, like.dtype)
                d1 = self._d1(solution)
                enlargements.append((frozen.random.width, solution.effective_residual, solution.rank))
                if d1.holds or frozen.random.width >= self.max_random_features:
                    break
                width *= 2
        nu = {k: v for k, v in (("tangent", solution.nu_tangent), ("features", solution.nu_features))
              if v is not None}
        nu_norm_sq = solution.nu_norm_sq
        if self.coefficients == "rank-one":
            kappa = math.sqrt(nu_norm_sq)
            if kappa == 0:
                raise DiagnosticsError("ν = 0: the target is zero on the training set")
            self.augmented = AugmentedModel(self.base_model, frozen, {k: v / kappa for k, v in nu.items()})
            self._nu = {"scale": torch.tensor(kappa, dtype=torch.float64, device=like.device)}
        else:
            self.augmented = AugmentedModel(self.base_model, frozen)
            self._nu = nu
        self._add_coefficients_to_optimizer()
        self._distance_scale = 1.0 if self.loss == "mse" else scale_for_loss(self.target_loss, self._m)
        omega_sq = float(sum((p.detach().double() ** 2).sum() for p in self._omega))
        self._trajectory = Trajectory(self.targets, omega_sq, nu_norm_sq, self._distance_scale)
        self._last_distance_sq, self._last_x = self._distance_sq(), self._flat_trained()
        self.switch_report = SwitchReport(
            iteration=self.iteration,
            feature_map=self.feature_map,
            coefficients=self.coefficients,
            loss=self.loss,
            n_samples=self._n,
            n_outputs=self._m,
            n_features=int((tangent.shape[1] if tangent is not None else 0) + frozen.n_features * self._m),
            n_coefficients=sum(p.numel() for p in self.augmented.trainable()),
            rank=solution.rank,
            residual_before=residual_before,
            residual=solution.residual,
            rounding=solution.rounding,
            residual_tol=self.residual_tol,
            aligned=d1.holds,
            enlargements=enlargements,
            random_features=frozen.random.width if frozen.random is not None else 0,
            omega_norm_sq=omega_sq,
            nu_norm_sq=nu_norm_sq,
            distance_scale=self._distance_scale,
            distance_target_loss=self._trajectory.distance_target_loss,
            check_seconds=time.perf_counter() - start,
            tangent_scale=frozen.tangent_scale,
            verdict=d1,
        )
        return self.switch_report

    def _d1(self, solution: AlignmentSolution) -> theory.Verdict:
        """D1 for the frozen block, decided on the bounds of its exact residual (``theory/alignment.md#resolution``)."""
        return theory.alignment_condition(solution.residual, self.residual_tol, bounds=solution.bounds)

    def _scale_of(self, J: torch.Tensor, frozen: FrozenFeatures) -> float:
        """``α`` of the tangent map: the user's, or ``sqrt(λ_max(ΦΦᵀ)/λ_max(JJᵀ))`` (``Φ``: the head's columns)."""
        if self.tangent_scale != "head":
            return float(self.tangent_scale)
        columns = torch.cat([torch.full((p.numel(),), name.startswith(self.head + "."), device=J.device)
                             for name, p in frozen.frozen.named_parameters()])  # J's column order
        if not columns.any():
            raise UnsupportedModelError(
                f"the output layer {self.head!r} has no parameters of its own (tied weights?): "
                "pass tangent_scale= a number")
        return math.sqrt(_top_eigenvalue(J[:, columns]) / _top_eigenvalue(J))

    def _add_coefficients_to_optimizer(self) -> None:
        new = self.augmented.trainable()
        if self._factory is not None:
            self._optimizer = self._factory(list(self.base_model.parameters()) + new)
            return
        group = self._group_of(self._omega[0])
        self._optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": new})

    def _group_of(self, p: torch.Tensor) -> dict:
        for group in self._optimizer.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise DiagnosticsError("the optimiser does not update the output layer: the theorem needs ω trained")

    # -- records ------------------------------------------------------------------------------
    def _trained(self) -> list[nn.Parameter]:
        return self._omega + self.augmented.trainable()

    def _distance_sq(self) -> float:
        """``‖ω‖² + ‖u − cν‖²`` in float64."""
        c = self._distance_scale
        total = sum(float((p.detach().double() ** 2).sum()) for p in self._omega)
        names = ["scale"] if self.augmented.rank_one else list(self.augmented.coefficients)
        params = self.augmented.trainable()
        for name, p in zip(names, params, strict=True):
            total += float(((p.detach().double() - c * self._nu[name]) ** 2).sum())
        return total

    def _flat_trained(self) -> torch.Tensor:
        """``x = (ω, u)`` as one float64 vector (a copy)."""
        return torch.cat([p.detach().double().reshape(-1) for p in self._trained()])

    def _flat_grad(self) -> torch.Tensor:
        """``∇_{ω,u}L`` as held in ``.grad`` now, one float64 vector (a copy; missing gradients are zero)."""
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().reshape(-1)
                          for p in self._trained()])

    def _common_lr(self) -> float:
        lrs = {float(self._group_of(p)["lr"]) for p in self._trained()}
        return lrs.pop() if len(lrs) == 1 else math.nan

    def _record_step(self, closure: Callable[[], torch.Tensor] | None, loss: float | None) -> float:
        """Take (or follow) one step and record it with the update actually applied to ``(ω, u)``.

        With a closure the step starts from the parameters as they are now, which are compared with those the
        last step left (an outside write between steps is recorded, ``outside_change``), and with
        ``full_batch=True`` the closure's loss is compared with the training loss at the same parameters (one
        extra forward pass over the training set). After the user's own step neither can be observed.
        """
        captured: dict = {}
        dtype = self._omega[0].dtype
        if closure is not None:
            before, x_before, lr = self._distance_sq(), self._flat_trained(), self._common_lr()

            def wrapped() -> torch.Tensor:
                value = closure()
                if not captured:
                    captured.update(loss=_as_float(value), grad=self._flat_grad(), dtype=_dtype_of(value, dtype))
                    if self.full_batch:
                        captured["training_loss"] = self._training_loss()
                return value

            self._optimizer.step(wrapped)
        else:
            before, x_before, lr = self._last_distance_sq, self._last_x, self._common_lr()
            captured = {"loss": math.nan if loss is None else _as_float(loss), "grad": self._flat_grad(),
                        "dtype": _dtype_of(loss, dtype)}
        after, x_after = self._distance_sq(), self._flat_trained()
        grad = captured["grad"]
        step = -lr * grad if math.isfinite(lr) else torch.full_like(grad, math.nan)
        eps = precision.eps(dtype)
        records = self._trajectory.records
        records.append(StepRecord(
            self.iteration, len(records), captured["loss"], float(grad @ grad), lr, before, after,
            update_error=float((x_after - x_before - step).norm()),
            update_size=float(step.norm()),
            rounding=2 * eps * (float(x_after.norm()) + float(step.norm())),
            x_norm=float(x_after.norm()),
            outside_change=float((x_before - self._last_x).norm()),
            eps=max(eps, precision.eps(captured["dtype"])),
            training_loss=captured.get("training_loss", math.nan),
        ))
        self._last_distance_sq, self._last_x = after, x_after
        return captured["loss"]

    def _training_loss(self) -> float:
        """``L`` of the whole training set at the current parameters, in the model's current mode.

        One forward pass over the training set (not chunked: batch statistics in train mode are those of the
        whole set, as in a full-batch closure); buffers (running statistics) and the random state are restored.
        """
        like = next(self.base_model.parameters())
        buffers = [(b, b.clone()) for b in self.model.buffers()]
        with torch.no_grad(), torch.random.fork_rng(devices=[like.device] if like.device.type == "cuda" else []):
            f = _inputs.call(self.model, _inputs.to(self._X, like.device, like.dtype))
        for b, saved in buffers:
            b.copy_(saved)
        return self.targets.loss_value(f.cpu())

    # -- verification ---------------------------------------------------------------------------
    def history(self) -> pd.DataFrame:
        """One row per step after ``τ`` (columns: :meth:`~diagnostics.aligned.guarantee.Trajectory.history`)."""
        if not self.switched:
            return pd.DataFrame(columns=list(HISTORY_COLUMNS))
        return self._trajectory.history()

    def departures(self) -> list[str]:
        """Plain statements of how the optimiser's configuration departs from the aligned-training theorem.

        What the recorded steps show (updates that are not ``−η∇_{ω,u}L``, the one-step identity, the step
        condition) is judged by :meth:`guarantee`.
        """
        if not self.switched:
            return ["the switch has not happened yet"]
        out = []
        opt = self._optimizer
        groups = {id(g): g for g in (self._group_of(p) for p in self._trained())}.values()
        if type(opt) is not torch.optim.SGD:
            out.append(f"{type(opt).__name__} is not gradient descent (adaptive or other rule on ω and u)")
        else:
            for g in groups:
                if g.get("momentum", 0) != 0:
                    out.append(f"SGD momentum={g['momentum']} on ω and u (heavy-ball, not gradient steps)")
                if g.get("weight_decay", 0) != 0:
                    out.append(f"weight_decay={g['weight_decay']} on ω and u (a regularised loss)")
                if g.get("maximize", False):
                    out.append("maximize=True")
        if any(not math.isfinite(r.lr) for r in self._trajectory.records) or len({float(g["lr"]) for g in groups}) > 1:
            out.append("ω and u have different step sizes")
        if any(not math.isfinite(r.loss) for r in self._trajectory.records):
            out.append("some steps were recorded without their loss")
        return list(dict.fromkeys(out))

    def guarantee(self) -> GuaranteeReport:
        """Check the guarantee's statements on the recorded steps (see :class:`GuaranteeReport`)."""
        if not self.switched:
            raise DiagnosticsError("no guarantee before the switch: nothing is recorded before τ")
        return self._trajectory.report(self.switch_report.verdict, self.departures(), self.full_batch)


def _as_float(value: object) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _dtype_of(value: object, default: torch.dtype) -> torch.dtype:
    """Return the floating dtype a loss was computed in (``default`` for Python numbers)."""
    return value.dtype if isinstance(value, torch.Tensor) and value.dtype.is_floating_point else default


def _chunked(fn: Callable[[_inputs.Inputs], torch.Tensor], x: _inputs.Inputs, n: int) -> torch.Tensor:
    return torch.cat([fn(_inputs.take(x, slice(s, min(n, s + _CHUNK)))) for s in range(0, n, _CHUNK)])


def _require_block_memory(rows: int, cols: int, budget: int, what: str) -> None:
    """Refuse a float64 block that would not fit: the block, a working copy, its smaller Gram and eigenvectors."""
    memory.require(
        8 * (2 * rows * cols + 2 * min(rows, cols) ** 2), budget, f"D1 at the switch for {what} ({rows:,} × {cols:,})",
        "Check D1 on a subset of the training set (a smaller train_data), lower max_random_features, "
        "use feature_map='penultimate', or raise memory_budget.",
    )


def _top_eigenvalue(A: torch.Tensor) -> float:
    """``λ_max(AAᵀ) = σ_max(A)²``: dense for thin matrices, else ARPACK (seeded: the same matrix, the same number)."""
    if min(A.shape) <= 256:
        return float(torch.linalg.matrix_norm(A.detach().double(), ord=2)) ** 2
    sigma = svds(A.detach().cpu().double().numpy(), k=1, return_singular_vectors=False, random_state=0)
    return float(sigma[0]) ** 2
