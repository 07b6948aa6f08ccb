"""The Jacobian as a matrix-free linear operator (THEORY §7).

``J = ∂f_X/∂θ ∈ R^{nm×d}`` is never formed: products with it are computed by automatic
differentiation over chunks of samples,

- ``J v`` by forward mode (``torch.func.jvp``),
- ``Jᵀ u`` by reverse mode (``torch.func.vjp``),
- ``K v = J (Jᵀ v)``, the empirical NTK Gram applied to a vector,
- ``J V`` and ``Jᵀ U`` for a block of vectors at once (``torch.vmap`` over the products: one forward
  pass per chunk serves every column),

so the memory is ``O(nm + d)`` plus the activations of one chunk. This is how the alignment
condition is checked on probe sets too large for the dense Gram (:mod:`diagnostics.matrix_free`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import nn
from torch.func import jvp, vjp, vmap

from ..errors import DiagnosticsError
from . import inputs as _inputs
from .functional import FunctionalModel, ParamSelector

__all__ = ["JacobianOperator"]

#: Samples per chunk when ``chunk_size`` is not given (eval mode).
DEFAULT_CHUNK = 1024


class JacobianOperator:
    r"""``J(θ) = ∂f_X(θ)/∂θ`` at the model's current parameters, as a linear operator.

    Rows are sample-major (row ``i*m + c`` is ``∂f_c(x_i)/∂θ``), columns follow
    ``named_parameters()`` order, exactly as :func:`diagnostics.jacobian`.

    Parameters
    ----------
    model
        Any ``nn.Module``; parameters and buffers are copied, the model is never modified.
    inputs
        A tensor, tuple or dict of tensors batched along dimension 0.
    params, mode, output, dtype
        As in :func:`diagnostics.jacobian`.
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

    Notes
    -----
    ::

        matvec(v) = J v,     rmatvec(u) = Jᵀ u,     gram_matvec(v) = J Jᵀ v = K v.

    Each product costs one pass over the data (``gram_matvec`` two); nothing is cached between
    calls, so the measurement mode is set and restored around each call.
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
    ) -> None:
        self.fm = FunctionalModel(model, params=params, mode=mode, output=output, dtype=dtype)
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
            self.outputs = torch.cat([self.fm(self.fm.params, xc) for _, xc in self._chunks()])
        if not torch.isfinite(self.outputs).all():
            raise DiagnosticsError("the model's outputs contain NaN or inf on these inputs")
        self.m = self.outputs.shape[1]
        self.shape = (self.n * self.m, self.fm.n_params)
        self.dtype = self.fm.dtype

    def _chunks(self) -> Iterator[tuple[slice, _inputs.Inputs]]:
        for start in range(0, self.n, self.chunk_size):
            rows = slice(start, min(self.n, start + self.chunk_size))
            yield rows, _inputs.take(self.x, rows)

    def _vector(self, v: torch.Tensor | np.ndarray, length: int, name: str) -> torch.Tensor:
        v = torch.as_tensor(v).reshape(-1)
        if v.shape[0] != length:
            raise DiagnosticsError(f"{name} must have length {length}, got {v.shape[0]}")
        return v.to(device=self.fm.device, dtype=self.dtype)

    def matvec(self, v: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``J v`` for ``v ∈ R^d`` (forward mode, one pass over the data)."""
        tangent = self.fm.unflatten(self._vector(v, self.shape[1], "v"))
        parts = []
        with self.fm.measuring():
            for _, xc in self._chunks():
                _, out = jvp(lambda p, xc=xc: self.fm(p, xc), (self.fm.params,), (tangent,))
                parts.append(out.reshape(-1))
        return torch.cat(parts).detach()

    def rmatvec(self, u: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``Jᵀ u`` for ``u ∈ R^{nm}`` (reverse mode, one pass over the data)."""
        u = self._vector(u, self.shape[0], "u").reshape(self.n, self.m)
        total = torch.zeros(self.shape[1], dtype=self.dtype, device=self.fm.device)
        with self.fm.measuring():
            for rows, xc in self._chunks():
                _, pull = vjp(lambda p, xc=xc: self.fm(p, xc), self.fm.params)
                total += self.fm.flatten(pull(u[rows])[0]).detach()
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

    def gram_matvec(self, v: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``K v = J (Jᵀ v)`` for ``v ∈ R^{nm}`` (two passes over the data)."""
        return self.matvec(self.rmatvec(v))

    def to_scipy(self, *, gram: bool = False) -> LinearOperator:
        """Wrap ``J`` (or ``K`` with ``gram=True``) as a float64 :class:`scipy.sparse.linalg.LinearOperator`.

        Vectors are converted to the compute dtype for each product and back to float64.
        """

        def wrap(fn):
            return lambda v: fn(np.asarray(v).reshape(-1)).to(torch.float64).cpu().numpy()

        if gram:
            N = self.shape[0]
            gram_product = wrap(self.gram_matvec)
            return LinearOperator((N, N), matvec=gram_product, rmatvec=gram_product, dtype=np.float64)
        return LinearOperator(
            self.shape, matvec=wrap(self.matvec), rmatvec=wrap(self.rmatvec), dtype=np.float64
        )
