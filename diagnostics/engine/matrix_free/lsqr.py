"""LSQR that finishes: float64, resumable from a checkpoint, with progress and a stated stopping rule.

This is the algorithm of Paige & Saunders (1982) without damping, step for step the one of
:func:`scipy.sparse.linalg.lsqr` (so the two agree to rounding), written out so that a long solve of
``ν = J⁺q`` (theory/alignment.md#least-norm-solution) on a whole training set can

- save its state (``x``, the bidiagonalisation vectors ``u``, ``v``, ``w`` and the scalars of the
  recurrences) atomically every ``checkpoint_every`` iterations and resume from it after a crash or a
  preemption, continuing the very same iteration sequence; a finished solve is saved with its stopping
  code and read back instead of being run again, unless it was truncated (then it goes on);
- report each iteration's estimate of the residual ``‖q − Jx_k‖`` (LSQR's ``φ̄_k``, which decreases
  monotonically) to a callback or a progress bar, with an ETA against the iteration cap;
- stop for a reason it states: the tolerance reached (``atol``/``btol``), the condition limit (the
  matrix-free rank rule of theory/alignment.md#matrix-free), the iteration cap or the time budget.

Every accumulation is in float64 whatever the dtype of ``J``. The vector ``u ∈ R^{nm}`` is updated in
place, so it may be a :class:`numpy.memmap` (``workspace=``) when ``nm`` exceeds the memory budget.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import DiagnosticsError
from ...store import RunStore

__all__ = ["STOP_REASONS", "LsqrResult", "lsqr"]

#: Why LSQR stopped, by its ``istop`` code (those of :func:`scipy.sparse.linalg.lsqr`, plus 8 for time).
STOP_REASONS = {
    0: "x = 0 is the solution (q = 0 or Jᵀq = 0)",
    1: "tolerance reached: ‖q − Jx‖ ≤ btol‖q‖ + atol‖J‖‖x‖ (a consistent system)",
    2: "tolerance reached: ‖Jᵀ(q − Jx)‖ ≤ atol‖J‖‖q − Jx‖ (a least-squares solution)",
    3: "condition limit reached: the estimate of cond(J) passed conlim (the rank rule)",
    4: "tolerance reached at machine precision (a consistent system)",
    5: "tolerance reached at machine precision (a least-squares solution)",
    6: "condition limit reached at machine precision",
    7: "iteration cap reached before the tolerance: a truncated solution",
    8: "time budget spent before the tolerance: a truncated solution",
}
#: Stops whose solution is a truncated one: its residual bounds the least-squares residual from above.
TRUNCATED = (7, 8)

Vector = Callable[[np.ndarray], np.ndarray]


@dataclass
class LsqrResult:
    """The outcome of :func:`lsqr`.

    Attributes
    ----------
    x
        The solution estimate (float64, length ``d``).
    istop, reason
        The stopping code (:data:`STOP_REASONS`) and the rule, in words.
    iterations
        Iterations done in all (those before a resume included).
    residual_norm
        LSQR's estimate of ``‖q − Jx‖``.
    resumed_from
        The iteration the solve resumed at from its checkpoint (0: started afresh).
    history
        ``(iteration, residual estimate)`` of each iteration run in this call.
    """

    x: np.ndarray
    istop: int
    reason: str
    iterations: int
    residual_norm: float
    resumed_from: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        """Whether the solve stopped before its tolerance (iteration cap or time budget)."""
        return self.istop in TRUNCATED


_SCALARS = ("itn", "alfa", "rhobar", "phibar", "anorm", "ddnorm", "res2", "xxnorm", "z", "cs2", "sn2", "bnorm",
            "rnorm", "arnorm", "acond", "xnorm")


def lsqr(
    matvec: Vector,
    rmatvec: Vector,
    b: np.ndarray,
    n_cols: int,
    *,
    atol: float,
    btol: float,
    conlim: float,
    iter_lim: int,
    time_budget: float | None = None,
    checkpoints: RunStore | None = None,
    name: str = "lsqr",
    checkpoint_every: int = 10,
    fingerprint: str = "",
    callback: Callable[[int, float], None] | None = None,
    workspace: Callable[[int], np.ndarray] | None = None,
    agree: Callable[[int], int] | None = None,
) -> LsqrResult:
    """Solve ``min ‖Jx − b‖`` from ``x = 0`` (the least-norm solution ``J⁺b`` in exact arithmetic).

    Parameters
    ----------
    matvec, rmatvec
        ``x ↦ Jx`` and ``u ↦ Jᵀu`` on float64 arrays.
    b
        The right-hand side, length ``nm``.
    n_cols
        ``d``, the length of ``x``.
    atol, btol, conlim, iter_lim
        As in :func:`scipy.sparse.linalg.lsqr`.
    time_budget
        Seconds after which the solve stops with a truncated solution (``istop = 8``); ``None``: no limit.
    checkpoints, name
        Where the solver state is kept, as ``name``: read at the start when it is this problem's,
        written atomically every ``checkpoint_every`` iterations and when the solve stops (a finished
        solve found there is returned as it is). A data-parallel job passes a store that reads on one
        process and hands the state to all.
    fingerprint
        Identifies the problem (operator, right-hand side, settings): a checkpoint of another problem
        is ignored.
    callback
        Called as ``callback(iteration, residual_estimate)`` after each iteration.
    workspace
        ``length ↦`` a zero float64 array for the ``nm``-vector ``u`` (default :func:`numpy.zeros`).
    agree
        ``istop ↦`` the stop decision every process of a data-parallel job takes (process 0's): each iteration's
        products are collective, so the processes must stop at the same iteration, which their own clocks and the
        round-off of their own scalars need not decide alike.
    """
    if not (iter_lim >= 1 and checkpoint_every >= 1):
        raise DiagnosticsError(f"iter_lim and checkpoint_every must be positive, got {iter_lim}, {checkpoint_every}")
    b = np.asarray(b, dtype=np.float64)
    key = _key(fingerprint, b, n_cols, atol, btol, conlim)
    state = None if checkpoints is None else checkpoints.read_state(name, key)
    u = (workspace or np.zeros)(b.shape[0])
    if state is None:
        s, x, v, w = _start(rmatvec, b, u, n_cols)
        if s["alfa"] * s["bnorm"] == 0:
            return LsqrResult(x, 0, STOP_REASONS[0], 0, s["bnorm"])
    else:
        s = {k: state[k] for k in _SCALARS}
        u[:] = state["u"].numpy()
        x, v, w = (state[k].numpy().copy() for k in ("x", "v", "w"))
    resumed, history, istop = int(s["itn"]), [], int(state["istop"]) if state else 0
    if istop in TRUNCATED:  # stopped by a cap or a budget: go on, up to this call's cap
        istop = 7 if s["itn"] >= iter_lim else 0
    ctol = 1.0 / conlim if conlim > 0 else 0.0
    started = time.perf_counter()
    while not istop:
        _iterate(s, matvec, rmatvec, u, v, w, x)
        history.append((int(s["itn"]), s["rnorm"]))
        if callback is not None:
            callback(int(s["itn"]), s["rnorm"])
        istop = _stop(s, atol, btol, ctol, iter_lim)
        if not istop and time_budget is not None and time.perf_counter() - started >= time_budget:
            istop = 8
        if agree is not None:
            istop = agree(istop)
        if checkpoints is not None and (istop or s["itn"] % checkpoint_every == 0):
            checkpoints.write_state(name, key, _state(s, istop, u, x, v, w))
    return LsqrResult(x, istop, STOP_REASONS[istop], int(s["itn"]), s["rnorm"], resumed, history)


def _start(rmatvec: Vector, b: np.ndarray, u: np.ndarray, n_cols: int) -> tuple[dict, np.ndarray, ...]:
    """Take the first step of the bidiagonalisation: ``βu = b``, ``αv = Jᵀu``; ``u`` is filled in place."""
    x = np.zeros(n_cols)
    beta = float(np.linalg.norm(b))
    u[:] = b
    v, alfa = np.zeros(n_cols), 0.0
    if beta > 0:
        u /= beta
        v = np.asarray(rmatvec(u), dtype=np.float64)
        alfa = float(np.linalg.norm(v))
    if alfa > 0:
        v = v / alfa
    s = dict.fromkeys(_SCALARS, 0.0)
    s.update(alfa=alfa, rhobar=alfa, phibar=beta, bnorm=beta, rnorm=beta, cs2=-1.0, arnorm=alfa * beta)
    return s, x, v, v.copy()


def _iterate(s: dict, matvec: Vector, rmatvec: Vector, u: np.ndarray, v: np.ndarray, w: np.ndarray,
             x: np.ndarray) -> None:
    """One LSQR iteration: ``u``, ``v``, ``w``, ``x`` are updated in place, the scalars in ``s``."""
    s["itn"] += 1
    u *= -s["alfa"]
    u += np.asarray(matvec(v), dtype=np.float64)
    beta = float(np.linalg.norm(u))
    if beta > 0:
        u /= beta
        s["anorm"] = math.sqrt(s["anorm"] ** 2 + s["alfa"] ** 2 + beta**2)
        v *= -beta
        v += np.asarray(rmatvec(u), dtype=np.float64)
        s["alfa"] = float(np.linalg.norm(v))
        if s["alfa"] > 0:
            v /= s["alfa"]
    cs, sn, rho = _sym_ortho(s["rhobar"], beta)
    theta = sn * s["alfa"]
    s["rhobar"] = -cs * s["alfa"]
    phi = cs * s["phibar"]
    s["phibar"] = sn * s["phibar"]
    tau = sn * phi
    dk = w / rho
    x += (phi / rho) * w
    w *= -theta / rho
    w += v
    s["ddnorm"] += float(dk @ dk)
    delta, gambar = s["sn2"] * rho, -s["cs2"] * rho
    rhs = phi - delta * s["z"]
    zbar = rhs / gambar
    s["xnorm"] = math.sqrt(s["xxnorm"] + zbar**2)
    gamma = math.sqrt(gambar**2 + theta**2)
    s["cs2"], s["sn2"], s["z"] = gambar / gamma, theta / gamma, rhs / gamma
    s["xxnorm"] += s["z"] ** 2
    s["acond"] = s["anorm"] * math.sqrt(s["ddnorm"])
    s["rnorm"] = math.sqrt(s["phibar"] ** 2 + s["res2"])
    s["arnorm"] = s["alfa"] * abs(tau)


def _stop(s: dict, atol: float, btol: float, ctol: float, iter_lim: int) -> int:
    """Return the stopping code after an iteration (0: go on), with the precedence of scipy's LSQR."""
    eps = np.finfo(np.float64).eps
    test1 = s["rnorm"] / s["bnorm"]
    test2 = s["arnorm"] / (s["anorm"] * s["rnorm"] + eps)
    test3 = 1.0 / (s["acond"] + eps)
    t1 = test1 / (1 + s["anorm"] * s["xnorm"] / s["bnorm"])
    rtol = btol + atol * s["anorm"] * s["xnorm"] / s["bnorm"]
    for code, met in ((1, test1 <= rtol), (2, test2 <= atol), (3, test3 <= ctol), (4, 1 + t1 <= 1),
                      (5, 1 + test2 <= 1), (6, 1 + test3 <= 1), (7, s["itn"] >= iter_lim)):
        if met:
            return code
    return 0


def _sym_ortho(a: float, b: float) -> tuple[float, float, float]:
    """Return a stable Givens rotation: ``(c, s, r)`` with ``[c s; −s c][a; b] = [r; 0]``."""
    if b == 0:
        return float(np.sign(a)), 0.0, abs(a)
    if a == 0:
        return 0.0, float(np.sign(b)), abs(b)
    if abs(b) > abs(a):
        tau = a / b
        sn = float(np.sign(b)) / math.sqrt(1 + tau * tau)
        return sn * tau, sn, b / sn
    tau = b / a
    cs = float(np.sign(a)) / math.sqrt(1 + tau * tau)
    return cs, cs * tau, a / cs


def _key(fingerprint: str, b: np.ndarray, n_cols: int, *settings: float) -> str:
    """Digest the problem: the caller's fingerprint, the right-hand side, ``d`` and the tolerances."""
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(np.ascontiguousarray(b).tobytes())
    digest.update(repr((n_cols, *settings)).encode())
    return digest.hexdigest()


def _state(s: dict, istop: int, u: np.ndarray, x: np.ndarray, v: np.ndarray, w: np.ndarray) -> dict:
    """Return the solver state (``istop > 0``: a finished solve) as tensors and numbers."""
    arrays = {k: torch.from_numpy(np.array(a, dtype=np.float64)) for k, a in (("u", u), ("x", x), ("v", v), ("w", w))}
    return {"istop": istop, **{k: float(s[k]) for k in _SCALARS}, **arrays}
