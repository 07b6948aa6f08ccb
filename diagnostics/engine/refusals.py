"""Which module was running when ``torch.func`` failed, and what that failure means for the user.

:class:`ModuleTrace` keeps, with forward (pre-)hooks, the stack of module forwards running while a
measurement runs; :func:`refusal` turns a ``torch.func`` error into an
:class:`~diagnostics.errors.UnsupportedModelError` that names the module, says what the failure
means and what to do (:data:`REFUSALS`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from ..errors import UnsupportedModelError

__all__ = ["REFUSALS", "ModuleTrace", "refusal"]


class ModuleTrace:
    """The stack of module forwards running right now, kept by forward (pre-)hooks while measuring.

    An exception leaving a forward skips the post-hooks of the modules it passes through, so the
    stack still ends with the innermost module that was running when it was raised.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: list[nn.Module] = []
        self._ours: set[int] = set()

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Global module hooks for the duration, which follow the model's own modules; removed afterwards.

        Two global hooks (``torch.nn.modules.module.register_module_forward_*``) rather than two per module:
        attaching them costs the same for any model.
        """
        self.stack.clear()
        self._ours = {id(m) for m in self.model.modules()}
        handles = []
        try:
            handles.append(register_module_forward_pre_hook(self._enter))
            handles.append(register_module_forward_hook(self._leave))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _enter(self, module: nn.Module, args: tuple) -> None:
        if id(module) in self._ours:
            self.stack.append(module)

    def _leave(self, module: nn.Module, args: tuple, output: object) -> None:
        if id(module) not in self._ours:
            return
        while self.stack and self.stack.pop() is not module:  # entries of exceptions caught inside
            pass

    def where(self) -> str:
        """Name the innermost running module, in words."""
        if not self.stack:
            return "no module's forward (the failure came while differentiating, after the forward)"
        mod = self.stack[-1]
        path = next((name for name, m in self.model.named_modules() if m is mod), None)
        if not path:
            return f"the forward of the model itself ({type(mod).__name__})"
        return f"module {path!r} ({type(mod).__name__})"


#: What ``torch.func`` says (fragments of its messages), what it means and what the user can do.
REFUSALS = (
    (
        ("data-dependent control flow", ".item()"),
        "the forward reads a tensor's value (.item(), `if tensor:`, data-dependent control flow), "
        "which vmap cannot do one sample at a time",
        "use strategy='vjp' (it differentiates the whole batch without vmap over the forward), or "
        "write the branch with tensor operations such as torch.where",
    ),
    (
        ("randomness",),
        "the forward draws random numbers while measuring (e.g. F.dropout(h, training=True))",
        "make the forward deterministic in eval mode; measurements with random masks are not "
        "reproducible",
    ),
    (
        ("mutate a captured tensor", "inplace arithmetic"),
        "the forward updates in place a tensor that is not an input of the measured function "
        "(a buffer, a tensor attribute or a tensor captured from outside)",
        "compute a new tensor instead, or update only when self.training is True",
    ),
    (
        ("setup_context",),
        "a torch.autograd.Function without the setup_context staticmethod that torch.func needs",
        "write its forward without ctx and add setup_context (PyTorch docs: 'Extending torch.func "
        "with autograd.Function')",
    ),
    (
        ("vmap staticmethod", "generate_vmap_rule", "vmap support"),
        "a torch.autograd.Function without vmap support",
        "set generate_vmap_rule = True on it or implement its vmap staticmethod, or use strategy='vjp'",
    ),
    (
        ("forward ad", "forward mode ad", "forward-mode", "jvp function"),
        "an operation without a forward-mode derivative (torch.func.jvp)",
        "the dense path (jacobian, ntk_gram, check_alignment, check_cms) needs reverse mode only; the "
        "matrix-free JacobianOperator falls back to reverse mode with strategy='auto'",
    ),
    (
        ("batching rule",),
        "an operation that vmap cannot batch",
        "use strategy='vjp' (no vmap over the forward)",
    ),
    (
        ("vmap", "functorch", "torch.func", "transform"),
        "an operation torch.func cannot transform",
        "use strategy='vjp', or replace the operation; the message above says which one",
    ),
)


def refusal(exc: BaseException, where: str) -> UnsupportedModelError | None:
    """Build the :class:`UnsupportedModelError` for a ``torch.func`` failure; ``None`` for other errors."""
    text = str(exc)
    lowered = text.lower()
    for fragments, meaning, advice in REFUSALS:
        if any(f.lower() in lowered for f in fragments):
            first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            return UnsupportedModelError(
                f"cannot measure this model: {meaning}, in {where}. What to do: {advice}. "
                f"(torch.func said: {first[:500]})"
            )
    return None
