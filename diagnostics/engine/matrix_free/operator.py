"""The Jacobian as a matrix-free linear operator (theory/alignment.md#setup).

``J = ∂f_X/∂θ ∈ R^{nm×d}`` is never formed whole: products with it are computed by automatic
differentiation over chunks of samples,

- ``J v`` by forward mode (``torch.func.jvp``), or, for models with an operation that has no
  forward-mode derivative (``scaled_dot_product_attention`` on the CPU, ``weight_norm``) or when a
  strategy other than ``"auto"`` is asked for, in reverse mode from the rows of ``J`` for one chunk of
  samples at a time, formed by the dense engine with that strategy (:func:`~diagnostics.jacobian`);
- ``Jᵀ u`` by reverse mode (``torch.func.vjp``);
- ``K v = J (Jᵀ v)``, the empirical NTK Gram applied to a vector,
- ``J V`` and ``Jᵀ U`` for a block of vectors at once (``torch.vmap`` over the products: one forward
  pass per chunk serves every column),

so the memory is ``O(nm + d)`` plus one chunk's activations (and, in reverse mode, one chunk's rows
of ``J``). This is how the alignment condition is checked on probe sets too large for the dense Gram.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import nn
from torch.func import jvp, vjp, vmap

from ...errors import DiagnosticsError
from .. import inputs as _inputs
from .. import memory
from ..functional import FunctionalModel, ParamSelector
from ..jacobian import jacobian
from ..measurement import STRATEGIES

__all__ = ["JacobianOperator", "LinearOperatorMixin"]

#: Samples per chunk when ``chunk_size`` is not given (eval mode).
DEFAULT_CHUNK = 1024


class LinearOperatorMixin:
    """``K v = J(Jᵀv)`` and the scipy wrappers, for any class with ``shape``, ``matvec`` and ``rmatvec``."""

    shape: tuple[int, int]

    def matvec(self, v: torch.Tensor | np.ndarray) -> torch.Tensor:  # pragma: no cover - the interface
        """``J v``."""
        raise NotImplementedError

    def rmatvec(self, u: torch.Tensor | np.ndarray) -> torch.Tensor:  # pragma: no cover - the interface
        """``Jᵀ u``."""
        raise NotImplementedError

    def gram_matvec(self, v: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``K v = J (Jᵀ v)`` for ``v ∈ R^{nm}`` (two passes over the data)."""
        return self.matvec(self.rmatvec(v))

    def to_scipy(self, *, gram: bool = False) -> LinearOperator:
        """Wrap ``J`` (or ``K`` with ``gram=True``) as a float64 :class:`scipy.sparse.linalg.LinearOperator`.

        Vectors are converted to the compute dtype for each product and back to float64.
        """

        def wrap(fn):
            return lambda v: torch.as_tensor(fn(np.asarray(v).reshape(-1))).to(torch.float64).cpu().numpy()

        if gram:
            N = self.shape[0]
            gram_product = wrap(self.gram_matvec)
            return LinearOperator((N, N), matvec=gram_product, rmatvec=gram_product, dtype=np.float64)
        return LinearOperator(
            self.shape, matvec=wrap(self.matvec), rmatvec=wrap(self.rmatvec), dtype=np.float64
        )


class JacobianOperator(LinearOperatorMixin):
    r"""``J(θ) = ∂f_X(θ)/∂θ`` at the model's current parameters, as a linear operator.

    Rows are sample-major (row ``i*m + c`` is ``∂f_c(x_i)/∂θ``), columns follow
    ``named_parameters()`` order, exactly as :func:`diagnostics.jacobian`.

    Parameters
    ----------
    model
        Any ``nn.Module``; parameters and buffers are copied, the model is never modified.
    inputs
        A tensor, tuple or dict of tensors batched along dimension 0.
    params, mode, output, dtype, memory_budget
        As in :func:`diagnostics.jacobian`.
    strategy
        One of :data:`~diagnostics.engine.jacobian.STRATEGIES`: ``"auto"`` computes ``J v`` by forward mode
        when the model supports it and in reverse mode otherwise; another strategy computes ``J v`` in
        reverse mode, from the rows of ``J`` for one chunk at a time formed with that strategy.
    chunk_size
        Samples per forward pass (default :data:`DEFAULT_CHUNK` in eval mode). In
        ``mode="batch"`` samples interact through batch statistics, so the whole batch is one
        chunk and a smaller ``chunk_size`` is refused.

    Attributes
    ----------
    shape
        ``(n·m, d)``.
    outputs
        ``f_X(θ)`` as an ``(n, m)`` tensor.
    products
        How the products are computed: ``"jvp/vjp"`` (forward and reverse mode) or ``"rows/vjp"``
        (reverse mode only).
    choice
        Why, in words.

    Notes
    -----
    ::

        matvec(v) = J v,     rmatvec(u) = Jᵀ u,     gram_matvec(v) = J Jᵀ v = K v.

    Each product costs one pass over the data (``gram_matvec`` two; ``J v`` in reverse mode ``m``
    backward passes per chunk); nothing is cached between calls, so the measurement mode is set and
    restored around each call. Inside ``torch.inference_mode()`` the products still work.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: object,
        *,
        params: ParamSelector = None,
        mode: str = "eval",
        output: _inputs.OutputSelector = None,
        dtype: torch.dtype | None = None,
        chunk_size: int | None = None,
        strategy: str = "auto",
        memory_budget: int | None = None,
    ) -> None:
        self._set_model(model, params=params, mode=mode, output=output, dtype=dtype, strategy=strategy,
                        memory_budget=memory_budget)
        self.x, self.n = self.fm.prepare(inputs)
        if chunk_size is not None and chunk_size < 1:
            raise DiagnosticsError(f"chunk_size must be a positive integer, got {chunk_size}")
        if mode == "batch":
            if chunk_size is not None and chunk_size < self.n:
                raise DiagnosticsError(
                    "mode='batch' couples the samples through batch statistics: the whole batch "
                    f"must be one chunk, so chunk_size={chunk_size} < n={self.n} is not possible"
                )
            chunk_size = self.n
        self.chunk_size = min(self.n, chunk_size or DEFAULT_CHUNK)
        with self.fm.measuring(), torch.no_grad():
            outputs = torch.cat([self.fm(self.fm.params, xc) for _, xc in self._chunks()])
        self._set_outputs(outputs)

    def _set_model(self, model: nn.Module, *, params: ParamSelector, mode: str, output: _inputs.OutputSelector,
                   dtype: torch.dtype | None, strategy: str, memory_budget: int | None) -> None:
        """Check the strategy and take the functional copy of the model and the memory budget."""
        if strategy not in STRATEGIES:
            raise DiagnosticsError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.fm = FunctionalModel(model, params=params, mode=mode, output=output, dtype=dtype)
        self.strategy = strategy
        self.budget = memory.resolve_budget(memory_budget, self.fm.device)
        self.dtype = self.fm.dtype
        self._products: tuple[str, str] | None = None

    def _set_outputs(self, outputs: torch.Tensor) -> None:
        """Keep the ``(n, m)`` outputs, refusing NaN or inf, and fix ``m`` and the shape."""
        if not torch.isfinite(outputs).all():
            raise DiagnosticsError("the model's outputs contain NaN or inf on these inputs")
        self.outputs = outputs
        self.m = outputs.shape[1]
        self.shape = (self.n * self.m, self.fm.n_params)

    @property
    def products(self) -> str:
        """``"jvp/vjp"`` or ``"rows/vjp"``: how ``J v`` and ``Jᵀ u`` are computed (decided on first use)."""
        if self._products is None:
            self._products = self._choose_products()
        return self._products[0]

    @property
    def choice(self) -> str:
        """Why :attr:`products`, in words."""
        self.products  # noqa: B018 - decides them
        return self._products[1]

    def _choose_products(self) -> tuple[str, str]:
        """Choose forward mode for ``J v`` when ``auto`` and the model supports it (tried on two samples)."""
        if self.strategy != "auto":
            return "rows/vjp", f"strategy={self.strategy!r}: J v from rows of J formed with it (reverse mode only)"
        few = self._load(slice(0, min(self.n, 2) if self.fm.mode == "eval" else self.n))
        tangent = {k: torch.zeros_like(v) for k, v in self.fm.params.items()}
        try:
            with self.fm.measuring():
                jvp(lambda p: self.fm(p, few), (self.fm.params,), (tangent,))
        except Exception as exc:  # noqa: BLE001 - whatever forward mode cannot do, reverse mode is tried
            first = str(exc).strip().splitlines()[0].split(". What to do")[0] if str(exc).strip() else ""
            return "rows/vjp", (f"auto: forward mode failed ({type(exc).__name__}: {first}), so J v comes from rows "
                                "of J in reverse mode")
        return "jvp/vjp", "auto: forward mode for J v, reverse mode for Jᵀ u"

    def row_blocks(self, budget: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(samples, rows of J for them)`` chunk by chunk: the per-sample Jacobian blocks ``(len·m, d)``.

        Each block is formed by the dense engine with the operator's strategy, as many samples at a time as
        fit ``budget`` bytes (default the memory budget) with a working factor of 3; in batch mode the whole
        batch is one block. The parameter-space Gram (:mod:`~diagnostics.engine.matrix_free.sketch`) and the
        Rayleigh–Ritz pass (:mod:`~diagnostics.engine.matrix_free.ritz`) read ``J`` this way.
        """
        if self.fm.mode == "batch":
            yield slice(0, self.n), self._rows(self._load(slice(0, self.n)))
            return
        per_sample = 3 * self.m * self.fm.n_params * torch.empty((), dtype=self.dtype).element_size()
        size = max(1, min(self.chunk_size, (budget or self.budget) // max(per_sample, 1)))
        for rows, xc in self._chunks(size):
            yield rows, self._rows(xc)

    def _chunks(self, size: int | None = None) -> Iterator[tuple[slice, _inputs.Inputs]]:
        """Consecutive chunks of ``size`` samples (default :attr:`chunk_size`): their rows and inputs."""
        size = size or self.chunk_size
        for start in range(0, self.n, size):
            rows = slice(start, min(self.n, start + size))
            yield rows, self._load(rows)

    def _load(self, rows: slice) -> _inputs.Inputs:
        """Return the prepared inputs of the samples ``rows``."""
        return _inputs.take(self.x, rows)

    def _vector(self, v: torch.Tensor | np.ndarray, length: int, name: str) -> torch.Tensor:
        with torch.inference_mode(False):
            v = torch.as_tensor(v).reshape(-1)
            if v.shape[0] != length:
                raise DiagnosticsError(f"{name} must have length {length}, got {v.shape[0]}")
            return (v.clone() if v.is_inference() else v).to(device=self.fm.device, dtype=self.dtype)

    def matvec(self, v: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``J v`` for ``v ∈ R^d`` (forward mode: one pass over the data; reverse mode: ``m`` passes per chunk)."""
        return torch.cat([part for _, part in self.matvec_chunks(v)])

    def matvec_chunks(self, v: torch.Tensor | np.ndarray) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(samples, (J v)[samples·m])``, chunk by chunk, so ``J v`` need not be held whole."""
        vector = self._vector(v, self.shape[1], "v")
        if self.products == "rows/vjp":
            for rows, block in self.row_blocks():
                yield rows, block @ vector
            return
        tangent = self.fm.unflatten(vector)
        with self.fm.measuring():
            for rows, xc in self._chunks():
                _, out = jvp(lambda p, xc=xc: self.fm(p, xc), (self.fm.params,), (tangent,))
                yield rows, out.reshape(-1).detach()

    def _rows(self, xc: _inputs.Inputs) -> torch.Tensor:
        """Compute the rows of ``J`` for the samples ``xc`` by the dense engine with the operator's strategy."""
        return jacobian(self.fm.module, xc, params=list(self.fm.names), mode=self.fm.mode, output=self.fm.output,
                        dtype=self.dtype, strategy=self.strategy, memory_budget=self.budget).detach()

    def rmatvec(self, u: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``Jᵀ u`` for ``u ∈ R^{nm}`` (reverse mode, one pass over the data)."""
        lazy = isinstance(u, np.ndarray) and u.shape == (self.shape[0],)  # perhaps memory-mapped: read by chunk
        u = u if lazy else self._vector(u, self.shape[0], "u")
        with self.fm.measuring():
            total = torch.zeros(self.shape[1], dtype=self.dtype, device=self.fm.device)
            for rows, xc in self._chunks():
                part = u[rows.start * self.m : rows.stop * self.m]
                part = self._vector(part, len(part), "u") if lazy else part
                _, pull = vjp(lambda p, xc=xc: self.fm(p, xc), self.fm.params)
                total += self.fm.flatten(pull(part.reshape(-1, self.m))[0]).detach()
        return total

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``J V`` for ``V ∈ R^{d×p}`` (forward mode, one pass over the data for all ``p`` columns)."""
        V = self._block(V, self.shape[1], "V")
        tangents = {k: t.movedim(-1, 0) for k, t in self._split(V).items()}
        parts = []
        with self.fm.measuring():
            for _, xc in self._chunks():
                def column(t, xc=xc):
                    return jvp(lambda p: self.fm(p, xc), (self.fm.params,), (t,))[1]

                parts.append(vmap(column)(tangents))  # (p, chunk, m)
        return torch.cat(parts, dim=1).reshape(V.shape[1], -1).T.detach()

    def rmatmat(self, U: torch.Tensor) -> torch.Tensor:
        """``Jᵀ U`` for ``U ∈ R^{nm×p}`` (reverse mode, one pass over the data for all ``p`` columns)."""
        U = self._block(U, self.shape[0], "U").T.reshape(-1, self.n, self.m)
        total = torch.zeros(U.shape[0], self.shape[1], dtype=self.dtype, device=self.fm.device)
        with self.fm.measuring():
            for rows, xc in self._chunks():
                _, pull = vjp(lambda p, xc=xc: self.fm(p, xc), self.fm.params)
                total += self.fm.flatten(vmap(pull)(U[:, rows])[0]).detach()
        return total.T

    def _block(self, M: torch.Tensor | np.ndarray, length: int, name: str) -> torch.Tensor:
        M = torch.as_tensor(M)
        if M.ndim != 2 or M.shape[0] != length or M.shape[1] == 0:
            raise DiagnosticsError(f"{name} must be a matrix with {length} rows and at least one column, "
                                   f"got shape {tuple(M.shape)}")
        return M.to(device=self.fm.device, dtype=self.dtype)

    def _split(self, M: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split the rows of a ``(d, p)`` block into per-parameter ``(*shape, p)`` blocks."""
        out, start = {}, 0
        for k in self.fm.names:
            size = self.fm.params[k].numel()
            out[k] = M[start : start + size].reshape(*self.fm.shapes[k], M.shape[1])
            start += size
        return out
