"""How a width study trains, and which statements about gradient descent apply to it.

A :class:`Recipe` is the training of every run of a family: the optimiser (a factory of the model's parameters,
and of the width for per-width scaling), its learning-rate schedule, the batches, the loss, gradient clipping,
mixed precision, the number of optimiser steps, or the user's own step function.

What applies (``theory/recipe.md``). Statements about a *point* of training (D1, (I2), (I3), the certificate, rank,
kernel movement, per-layer alignment) hold for any optimiser. The statements about *gradient descent* have premises
on the recipe: the horizon floors of a kernel for a step ``η`` and ``T`` steps and the dynamics linearised at
``K_0`` (``theory/alignment.md#horizon-residual``) need plain full-batch gradient descent ``θ ← θ − η∇L`` on
``L = (1/2n)‖f_X − Y‖²``, the linearised dynamics a stable step ``ηλ_max(K_0)/n ≤ 2`` as well (a horizon floor
counts the slow directions at any step and names its unstable part); the gradient-descent rate bound
(``theory/results.md#gradient-descent-rate``) holds for any update rule whose recorded losses and gradients are the
squared loss's on the whole training set. :func:`recipe_premises` gives them for a run, through
:func:`theory.gradient_descent_premises`, with the premises only a study observes (a custom step, a schedule,
clipping); a statement with a premise not met is *not applicable*, for the reason :func:`premise_reasons` gives.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from theory import Premise, gradient_descent_premises

from ..errors import DiagnosticsError
from ..models import learning_rate_multiplier

__all__ = [
    "AMP_DTYPES", "GD_STATEMENTS", "OPTIMIZERS", "SCHEDULES", "OptimizerFactory", "Recipe", "applies",
    "merge_reasons", "optimizer_factory", "premise_reasons", "recipe_premises", "setting_key",
]

#: Optimisers by the names the command line and :func:`optimizer_factory` accept.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
}
#: Learning-rate schedules by name: a factory ``(optimizer, steps) → scheduler`` stepped after every step.
SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]] = {
    "cosine": lambda optimizer, steps: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps),
    "linear": lambda optimizer, steps: torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=steps),
}
#: Mixed precision: the autocast dtype of the training forward pass (``"fp16"`` also scales the loss).
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

StepFunction = Callable[[nn.Module, Any, torch.optim.Optimizer], torch.Tensor | float]
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class OptimizerFactory:
    """A named optimiser with its hyper-parameters, and the width scaling of its learning rate.

    Called as ``factory(params, width)``; the learning rate is ``lr · learning_rate_multiplier(scaling, width)``
    (``scaling=None``: ``lr`` at every width). Picklable and described by its fields, so a run's fingerprint
    knows it.
    """

    name: str
    lr: float
    options: tuple[tuple[str, Any], ...] = ()
    scaling: str | None = None

    def __call__(self, params: Any, width: int) -> torch.optim.Optimizer:
        """Build the optimiser of ``params`` for a model of ``width``."""
        multiplier = learning_rate_multiplier(self.scaling, width) if self.scaling else 1.0
        return OPTIMIZERS[self.name](params, lr=self.lr * multiplier, **dict(self.options))

    def key(self) -> dict[str, Any]:
        """Return a JSON-ready description (for fingerprints)."""
        return {"name": self.name, "lr": self.lr, "options": dict(self.options), "scaling": self.scaling}


def optimizer_factory(name: str, lr: float, *, scaling: str | None = None, **options: Any) -> OptimizerFactory:
    """Return the factory of a named optimiser (``"sgd"``, ``"adam"``, ``"adamw"``), checked now.

    Parameters
    ----------
    name
        A key of :data:`OPTIMIZERS`.
    lr
        The learning rate (at every width, or the base rate of ``scaling``).
    scaling
        ``None``, or a parameterisation of :func:`~diagnostics.models.learning_rate_multiplier` (``"ntk"``: ``lr``,
        ``"mf"``: ``lr · width``, ``"standard"``: ``lr / width``).
    **options
        Further arguments of the optimiser (``momentum``, ``weight_decay``, ``betas``, ``nesterov``, ...).

    Raises
    ------
    DiagnosticsError
        An unknown name, a learning rate that is not positive, or options the optimiser refuses.
    """
    if name not in OPTIMIZERS:
        raise DiagnosticsError(f"optimizer must be one of {sorted(OPTIMIZERS)} or a factory, got {name!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0 or not math.isfinite(lr):
        raise DiagnosticsError(f"a named optimizer needs a positive learning rate lr=, got {lr!r}")
    factory = OptimizerFactory(name, float(lr), tuple(sorted(options.items())), scaling)
    try:
        factory([nn.Parameter(torch.zeros(1))], 1)
    except (TypeError, ValueError) as exc:
        raise DiagnosticsError(f"optimizer {name!r} refuses its options {options}: {exc}") from exc
    return factory


@dataclass(frozen=True)
class Recipe:
    """The training of every run of a family.

    Parameters
    ----------
    optimizer
        A factory ``params → Optimizer`` or ``(params, width) → Optimizer`` (for per-width scaling), e.g.
        ``lambda params: torch.optim.AdamW(params, lr=1e-3)`` or :func:`optimizer_factory`'s.
    steps
        Optimiser steps ``T``.
    batch_size
        Samples per step, drawn in a seeded order without replacement (epoch after epoch); ``None``: every step
        uses the whole training set (full batch), or the batches of the ``DataLoader`` the data came as.
    loss
        ``"mse"`` (``(1/2n)‖f − Y‖²``, class labels as one-hot rows), ``"ce"`` (mean cross-entropy of logits) or a
        callable ``loss(outputs, targets) → scalar``. The measurements use ``"ce"`` for ``"ce"`` and the squared
        loss otherwise.
    scheduler
        ``None``, a name of :data:`SCHEDULES` or a factory ``optimizer → LRScheduler``; stepped after every step.
    clip_grad_norm
        Clip the gradient to this norm before each update (``None``: no clipping).
    amp
        ``None``, ``"bf16"`` or ``"fp16"``: autocast of the training forward pass (``"fp16"`` with loss scaling);
        the measurements stay in their own dtype.
    train_step
        The user's own step ``train_step(model, batch, optimizer) → loss``, for what the other arguments do not
        cover: it computes the loss at the current parameters, back-propagates and updates (the study only calls it,
        then the scheduler). ``clip_grad_norm`` and ``amp`` belong inside it then.
    """

    optimizer: Callable[..., torch.optim.Optimizer]
    steps: int
    batch_size: int | None = None
    loss: str | LossFunction = "mse"
    scheduler: str | Callable[[torch.optim.Optimizer], Any] | None = None
    clip_grad_norm: float | None = None
    amp: str | None = None
    train_step: StepFunction | None = None

    def __post_init__(self) -> None:
        if not callable(self.optimizer):
            raise DiagnosticsError(f"optimizer must be a factory of the parameters, got {self.optimizer!r}")
        _positive_int("steps", self.steps)
        if self.batch_size is not None:
            _positive_int("batch_size", self.batch_size)
        if not (callable(self.loss) or self.loss in ("mse", "ce")):
            raise DiagnosticsError(f"loss must be 'mse', 'ce' or a callable (outputs, targets) → loss, got "
                                   f"{self.loss!r}")
        if isinstance(self.scheduler, str) and self.scheduler not in SCHEDULES:
            raise DiagnosticsError(f"scheduler must be one of {sorted(SCHEDULES)}, a factory or None, got "
                                   f"{self.scheduler!r}")
        if self.clip_grad_norm is not None and not (isinstance(self.clip_grad_norm, int | float)
                                                    and self.clip_grad_norm > 0):
            raise DiagnosticsError(f"clip_grad_norm must be a positive number or None, got {self.clip_grad_norm!r}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise DiagnosticsError(f"amp must be one of {sorted(AMP_DTYPES)} or None, got {self.amp!r}")
        if self.train_step is not None and (self.clip_grad_norm is not None or self.amp is not None):
            raise DiagnosticsError("clip_grad_norm and amp apply to the study's own step; a custom train_step "
                                   "clips and autocasts inside itself")

    @property
    def measure_loss(self) -> str:
        """The loss of the measurements: ``"ce"`` for a cross-entropy recipe, the squared loss otherwise."""
        return "ce" if self.loss == "ce" else "mse"

    @property
    def loss_name(self) -> str:
        """``"mse"``, ``"ce"`` or the callable's name."""
        return self.loss if isinstance(self.loss, str) else _name(self.loss)

    def make_optimizer(self, model: nn.Module, width: int) -> torch.optim.Optimizer:
        """Build the optimiser of the model's trainable parameters (passing ``width`` when the factory takes it)."""
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = self.optimizer(params, width) if _takes_width(self.optimizer) else self.optimizer(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise DiagnosticsError(f"the optimizer factory returned a {type(optimizer).__name__}, not a "
                                   "torch.optim.Optimizer")
        return optimizer

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """Build the learning-rate scheduler (or ``None``)."""
        if self.scheduler is None:
            return None
        if isinstance(self.scheduler, str):
            return SCHEDULES[self.scheduler](optimizer, self.steps)
        return self.scheduler(optimizer)

    def loss_value(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the training loss of a batch: ``outputs`` ``(b, m)``; ``targets`` class indices, one-hot or rows."""
        if callable(self.loss):
            return self.loss(outputs, targets)
        if self.loss == "ce":
            labels = targets if not targets.is_floating_point() else targets.argmax(1)
            return F.cross_entropy(outputs, labels.reshape(-1).long())
        if not targets.is_floating_point():
            targets = F.one_hot(targets.reshape(-1).long(), outputs.shape[1])
        elif targets.ndim == 1 and outputs.shape[1] == 1:
            targets = targets.reshape(-1, 1)
        if targets.shape != outputs.shape:
            raise DiagnosticsError(f"targets of shape {tuple(targets.shape)} do not fit the outputs "
                                   f"{tuple(outputs.shape)} for the squared loss")
        return 0.5 * ((outputs - targets.to(outputs.dtype)) ** 2).sum() / outputs.shape[0]

    def key(self) -> dict[str, Any]:
        """Return a JSON-ready description of everything that changes a run's result (for fingerprints)."""
        return {
            "optimizer": setting_key(self.optimizer), "steps": self.steps, "batch_size": self.batch_size,
            "loss": setting_key(self.loss), "scheduler": setting_key(self.scheduler),
            "clip_grad_norm": self.clip_grad_norm, "amp": self.amp, "train_step": setting_key(self.train_step),
        }


#: The statements about gradient descent the width report makes, by the key of their columns in the runs table,
#: with the statement of :func:`theory.gradient_descent_premises` each is and the words the report uses.
GD_STATEMENTS: dict[str, tuple[str, str]] = {
    "horizon": ("horizon", "horizon floor of K_0"),
    "linearised": ("linearised", "linearised dynamics at K_0"),
    "final_horizon": ("horizon", "horizon floor of K_T"),
    "rate": ("rate", "gradient-descent rate bound"),
}


def recipe_premises(statement: str, optimizer: Mapping[str, Any] | None, *, loss: str, full_batch: bool | None,
                    batches: str = "", custom_step: bool = False, scheduler: str | None = None,
                    clip_grad_norm: float | None = None, step_size: float | None = None,
                    lambda_max: float | None = None, n: int | None = None) -> tuple[Premise, ...]:
    """Return the premises under which a statement about gradient descent speaks of a run of a study.

    The premises of :func:`theory.gradient_descent_premises` (the update rule, the full batch, the squared loss;
    for the linearised dynamics the stable step ``ηλ_max/n ≤ 2`` of ``K_0``; for the rate only the full batch and
    the loss, ``theory/recipe.md``), observed on the study's recipe, and those only a study observes: a custom
    ``train_step`` (its update, loss and gradient are the user's), and for the horizon floors and the linearised
    dynamics, which assume one step ``η`` of plain gradient descent, a learning-rate schedule and gradient clipping.

    Parameters
    ----------
    statement
        A key of :data:`GD_STATEMENTS`.
    optimizer
        :func:`~diagnostics.tracking.meta.describe_optimizer` of the run's optimiser (``None``: not known).
    loss
        The training loss: ``"mse"`` is ``(1/2n)‖f − Y‖²``; ``"ce"`` and a callable's name are not.
    full_batch
        Whether every step used the whole training set, which is the probe (``None``: not known).
    batches
        How the batches were drawn, the reason when ``full_batch`` is ``False``.
    custom_step, scheduler, clip_grad_norm
        The recipe's own step function, the schedule's name, the clipping norm.
    step_size, lambda_max, n
        ``η``, ``λ_max`` of the statement's kernel and ``n``, for the stable step.

    Returns
    -------
    tuple of theory.Premise
        A statement with one not met is *not applicable*; :func:`premise_reasons` says why.
    """
    kind = GD_STATEMENTS[statement][0]
    premises = []
    for premise in gradient_descent_premises(kind, optimizer, full_batch=full_batch, squared_loss=loss == "mse",
                                             step_size=step_size, lambda_max=lambda_max, n=n):
        if premise.met is False and premise.name.startswith("squared loss"):
            premise = dataclasses.replace(premise, note=f"trained on the {loss} loss, not (1/2n)‖f − Y‖²")
        elif premise.met is False and "whole training set" in premise.name and batches:
            premise = dataclasses.replace(premise, note=batches)
        premises.append(premise)
    if custom_step:
        premises.append(Premise("the study's own training step", False,
                                "a custom train_step: its update, loss and gradient are the user's"))
    if kind != "rate" and scheduler:
        premises.append(Premise("one step size η over the run", False, f"a learning-rate schedule ({scheduler})"))
    if kind != "rate" and clip_grad_norm:
        premises.append(Premise("unclipped gradient steps", False, f"gradient clipping at norm {clip_grad_norm:g}"))
    return tuple(premises)


def applies(premises: Iterable[Premise]) -> bool:
    """Whether no premise is observed to fail (assumed ones count as met)."""
    return all(p.met is not False for p in premises)


def premise_reasons(premises: Iterable[Premise]) -> str:
    """Return the notes of the premises not met, joined (``""`` when every premise is met or assumed)."""
    return "; ".join(p.note or f"not met: {p.name}" for p in premises if p.met is False)


def merge_reasons(notes: Iterable[str]) -> str:
    """Join the reasons of several runs (:func:`premise_reasons`), each once, in order.

    The unstable steps, one ``ηλ_max/n`` per run, become one reason with their range.
    """
    reasons: list[str] = []
    ratios: list[float] = []
    for note in notes:
        for reason in note.split("; ") if note else ():
            found = _UNSTABLE.match(reason)
            if found:
                ratios.append(float(found.group(1)))
                reason = _UNSTABLE_REASON
            if reason not in reasons:
                reasons.append(reason)
    if ratios:
        low, high = min(ratios), max(ratios)
        span = f"{low:.3g}" if low == high else f"{low:.3g}–{high:.3g}"
        reasons[reasons.index(_UNSTABLE_REASON)] = (
            f"an unstable step, ηλ_max/n = {span} > 2, along which linearised gradient descent diverges instead of "
            "fitting")
    return "; ".join(reasons)


# ----------------------------------------------------------------------------------------------

_UNSTABLE_REASON = "unstable"
#: The note of theory's stable-step premise when it fails.
_UNSTABLE = re.compile(r"ηλ_max/n = ([0-9.eE+-]+): linearised gradient descent")


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DiagnosticsError(f"{name} must be a positive integer, got {value!r}")


def _takes_width(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` takes a second positional argument (the width)."""
    if isinstance(factory, OptimizerFactory):
        return True
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def _json_scalar(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _name(obj: object) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def setting_key(obj: object) -> Any:
    """Return what identifies a setting in a fingerprint: itself when plain, its fields, or its name and source."""
    if obj is None or _json_scalar(obj):
        return obj
    if hasattr(obj, "key") and callable(obj.key):
        return obj.key()
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        source = None
    return {"name": f"{getattr(obj, '__module__', '')}.{_name(obj)}", "source": source}
