r"""How ``strategy="auto"`` chooses: the plans, the cost model of its predictions, and what it knows of a problem.

A :class:`Plan` is one exact way to compute ``J`` and ``K`` (``theory/alignment.md#setup``): the structured
path with the other parameters by per-sample ``vmap(jacrev)`` or by ``vjp``; per-sample ``vmap(jacrev)``; or
``vjp``, over the whole batch or chunk by chunk. ``auto`` (:mod:`~diagnostics.engine.auto`) keeps the plans
that can run the model (samples that interact leave whole-batch ``vjp``; a model ``vmap`` cannot run over
samples, such as a recurrent layer or a padding mask read in Python, leaves ``vjp`` by chunks) and judges
them, recording what it finds in a :class:`Knowledge` per problem. A plan timed on two slices of the batch
is extrapolated to the whole by :func:`predict`:

.. math::

    t(n) = a + b\,n^e + \frac{\mathrm{FLOPs}_{\text{products}}(n)}{\text{matmul rate}},

with ``a`` and ``b`` fitted to the slices' times less their products' share (``e = 1`` when ``J`` is
formed sample by sample or chunk by chunk, ``e = 2`` when each row is pulled back through the whole
batch), the product FLOPs counted exactly from the layer shapes, and the rate of one matrix product
timed once per machine (:func:`matmul_rate`). The products' FLOPs alone bound a plan's time from below
before it runs. For ``vjp`` by chunks a slice *is* a chunk, so ``n/c`` times its time (less products) is
the whole batch's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import UnsupportedModelError

__all__ = [
    "NO_VMAP", "PLANS", "Choice", "Knowledge", "PerSampleFailure", "Plan", "matmul_rate", "predict", "synchronize",
]


class PerSampleFailure(UnsupportedModelError):
    """``vmap`` over samples cannot run the model (``strategy="auto"`` falls back to plans without it)."""


@dataclass(frozen=True)
class Plan:
    """One exact way to compute the Jacobian and the Gram.

    Attributes
    ----------
    strategy
        ``"structured"`` (layers with a rule from their inputs and cotangents), ``"jacrev"`` or ``"vjp"``.
    rest
        How the parameters outside the structured layers are differentiated: ``"jacrev"`` (``vmap`` over
        samples) or ``"vjp"``; equal to ``strategy`` for the other two.
    chunk
        For ``vjp``: ``0`` differentiates the whole batch at once (samples may interact); ``c > 0`` the
        batch ``c`` samples at a time, each chunk's ``c·m`` rows pulled back through that chunk only (valid
        when samples are independent; no ``vmap`` over samples, so it runs models ``vmap`` cannot).
    """

    strategy: str
    rest: str
    chunk: int = 0

    @property
    def per_sample(self) -> bool:
        """Whether the plan runs ``vmap`` over samples."""
        return self.rest == "jacrev"

    @property
    def label(self) -> str:
        """Name in reports: the strategy, joined by the rest when it is not the strategy's default."""
        name = f"structured+{self.rest}" if self.strategy == "structured" and self.rest != "jacrev" else self.strategy
        return f"{name} (chunks of {self.chunk} samples)" if self.chunk else name

    @property
    def exponent(self) -> int:
        """How the time to form ``J`` grows with ``n``: 1 by samples or chunks, 2 through the whole batch."""
        return 2 if self.rest == "vjp" and not self.chunk else 1

    def chunked(self, chunk: int) -> Plan:
        """Return the same plan with its ``vjp`` taken ``chunk`` samples at a time."""
        return Plan(self.strategy, "vjp", chunk)


#: The plan of each strategy a user can ask for.
PLANS = {"structured": Plan("structured", "jacrev"), "jacrev": Plan("jacrev", "jacrev"), "vjp": Plan("vjp", "vjp")}
#: Plans without ``vmap`` over samples (for models it cannot run): the structured path with the rest by
#: ``vjp``, and ``vjp``; the probe chooses their chunk size.
NO_VMAP = (Plan("structured", "vjp"), Plan("vjp", "vjp"))


@dataclass
class Choice:
    """What ``auto`` chose and why, for the manifest.

    Attributes
    ----------
    plan
        The chosen plan.
    reason
        Why, in words: how it was chosen and what was ruled out.
    predicted
        Seconds per plan label for the whole batch, timed on the whole problem or predicted from slices
        of it (empty when nothing was timed).
    settled
        Whether every plan has been judged (set after the measurement; until then later calls go on judging).
    """

    plan: Plan
    reason: str
    predicted: dict[str, float] = field(default_factory=dict)
    settled: bool = True

    def describe(self) -> str:
        """One line for the manifest."""
        if not self.predicted:
            return self.reason
        times = ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in sorted(self.predicted.items(), key=lambda kv: kv[1]))
        return f"{self.reason} (for the whole batch: {times})"


@dataclass
class Knowledge:
    """What ``auto`` knows about one problem: the plans judged so far (:mod:`~diagnostics.engine.auto`).

    Attributes
    ----------
    plans
        Every plan named below, by label.
    timed
        Seconds of a plan on the whole problem: the fastest run seen (measurements included).
    predicted
        Seconds predicted for the whole problem from timed slices of the batch.
    bounds
        Seconds the Gram products alone would take (a lower bound, from their FLOPs).
    ruled_out
        Why a plan is not a candidate: it failed, or was predicted slower than the fastest timed.
    chunks
        For ``vjp`` by chunks (by the base plan's label): the chunk size the chunk search found.
    no_vmap
        Why ``vmap`` cannot run the model over samples (``""`` when not known to fail).
    measured, spent
        Seconds of measurements, and of judging plans, on this problem in this process (not stored).
    """

    plans: dict[str, Plan] = field(default_factory=dict)
    timed: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)
    bounds: dict[str, float] = field(default_factory=dict)
    ruled_out: dict[str, str] = field(default_factory=dict)
    chunks: dict[str, int] = field(default_factory=dict)
    no_vmap: str = ""
    measured: float = 0.0
    spent: float = 0.0

    def time(self, plan: Plan, seconds: float) -> None:
        """Record a run of ``plan`` on the whole problem that took ``seconds``."""
        self.plans[plan.label] = plan
        self.timed[plan.label] = min(seconds, self.timed.get(plan.label, float("inf")))

    def predict(self, plan: Plan, seconds: float) -> None:
        """Record a prediction for ``plan`` on the whole problem."""
        self.plans[plan.label] = plan
        self.predicted[plan.label] = seconds

    def rule_out(self, plan: Plan, why: str) -> None:
        """Take ``plan`` out of the candidates, saying why."""
        self.plans[plan.label] = plan
        self.ruled_out[plan.label] = why

    def fastest(self) -> float:
        """Seconds of the fastest plan timed on the whole problem (inf when none)."""
        return min(self.timed.values(), default=float("inf"))

    def times(self) -> dict[str, float]:
        """Seconds per plan for the manifest: timed on the whole problem, else predicted."""
        return {**{k: v for k, v in self.predicted.items() if k not in self.ruled_out}, **self.timed}

    def to_dict(self) -> dict:
        """Return the stored part, as JSON types."""
        return {"plans": {k: [p.strategy, p.rest, p.chunk] for k, p in self.plans.items()}, "timed": self.timed,
                "predicted": self.predicted, "bounds": self.bounds, "ruled_out": self.ruled_out, "chunks": self.chunks,
                "no_vmap": self.no_vmap}

    @classmethod
    def from_dict(cls, stored: dict) -> Knowledge:
        """Read :meth:`to_dict`'s output back; raises ``TypeError``, ``ValueError`` or ``KeyError`` on anything else."""
        plans = {}
        for label, (strategy, rest, chunk) in stored["plans"].items():
            plan = Plan(str(strategy), str(rest), int(chunk))
            if plan.label != label or strategy not in ("structured", "jacrev", "vjp") or rest not in ("jacrev", "vjp"):
                raise ValueError(f"not a plan: {label!r}")
            plans[label] = plan

        def seconds(d: dict) -> dict[str, float]:
            return {str(k): float(v) for k, v in d.items() if k in plans}

        return cls(plans=plans, timed=seconds(stored["timed"]), predicted=seconds(stored["predicted"]),
                   bounds=seconds(stored["bounds"]),
                   ruled_out={str(k): str(v) for k, v in stored["ruled_out"].items() if k in plans},
                   chunks={str(k): int(v) for k, v in stored["chunks"].items()}, no_vmap=str(stored["no_vmap"]))


def predict(times: tuple[float, float], sizes: tuple[int, int], n: int, exponent: int,
            products: tuple[float, float, float], rate: float) -> float:
    """Seconds a plan will take on ``n`` samples, from its times on two slices.

    Parameters
    ----------
    times, sizes
        Seconds measured on slices of ``sizes[0] < sizes[1]`` samples.
    n
        Samples of the whole batch.
    exponent
        ``e``: the time to form ``J`` grows as ``n^e`` (:attr:`Plan.exponent`).
    products
        FLOPs of the Gram's matrix products on the two slices and on the whole batch (0 for a Jacobian).
    rate
        FLOP/s of the matrix products (:func:`matmul_rate`).

    Returns
    -------
    float
        ``a + b n^e + products(n)/rate``, with ``a, b ≥ 0`` fitted to the slices' times less their products.
    """
    (s1, s2), (p1, p2, pn) = sizes, products
    f1 = max(times[0] - p1 / rate, 0.0)
    f2 = max(times[1] - p2 / rate, 0.0)
    b = max((f2 - f1) / (s2**exponent - s1**exponent), 0.0)
    a = max(f2 - b * s2**exponent, 0.0)
    return a + b * n**exponent + pn / rate


_RATES: dict[tuple[str, torch.dtype, int], float] = {}


def matmul_rate(dtype: torch.dtype, device: torch.device) -> float:
    """Return the FLOP/s of a ``(512 × 256) · (256 × 512)`` product in ``dtype`` (best of 3, once per process)."""
    index = device.index if device.index is not None or device.type != "cuda" else torch.cuda.current_device()
    key = (f"{device.type}:{index}", dtype, torch.get_num_threads())  # "cuda" and "cuda:0" are one device
    if key not in _RATES:
        a = torch.full((512, 256), 0.5, dtype=dtype, device=device)  # no random draw: the user's stream is untouched
        best = float("inf")
        for _ in range(4):
            synchronize(device)
            start = time.perf_counter()
            a @ a.T
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        _RATES[key] = 2.0 * 512 * 512 * 256 / max(best, 1e-9)
    return _RATES[key]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
