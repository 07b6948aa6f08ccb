"""Clear refusals, never silent skipping (issue 5): what per-sample strategies cannot measure is refused
with a message naming the module and what to do, the model is left alone, and float32 models are not
refused by mistake (theory/alignment.md#setup).
"""

import pytest
import torch
from cases import CASES, IO_CASES
from helpers import NO_VMAP_FALLBACK_WARNING, ONE_THREAD, assert_matches_reference, assert_unchanged
from torch import nn

from diagnostics import UnsupportedModelError, check_alignment, check_cms, jacobian, ntk_gram

F64 = torch.float64
PER_SAMPLE = ("structured", "jacrev")

pytestmark = [ONE_THREAD, NO_VMAP_FALLBACK_WARNING]


class TrimPadding(nn.Module):
    """Drops the padding columns shared by the batch (``int(tensor)``: reads a value)."""

    def forward(self, h, mask):
        keep = int(mask.sum(1).max())
        return h[:, :keep], mask[:, :keep]


class PaddedPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.trim = TrimPadding()
        self.head = nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask):
        h, mask = self.trim(self.embed(input_ids), attention_mask)
        m = mask.to(h.dtype)[..., None]
        return self.head((h * m).sum(1) / m.sum(1))


def test_reading_a_tensor_value_is_refused_per_sample_naming_the_module_and_vjp_works():
    model, batch = PaddedPool().double(), IO_CASES["transformer-dict"].data(4)
    for strategy in ("jacrev", "structured"):
        with pytest.raises(UnsupportedModelError, match=r"module 'trim' \(TrimPadding\).*strategy='vjp'"):
            assert_unchanged(model, lambda s=strategy: ntk_gram(model, batch, strategy=s))
    assert_matches_reference(model, batch, strategies=("vjp", "auto"))  # auto falls back by itself


def test_auto_falls_back_from_vmap_and_says_so_in_the_manifest():
    model, batch = PaddedPool().double(), IO_CASES["transformer-dict"].data(4)
    Y = torch.randn(4, 2, dtype=F64)
    report = assert_unchanged(model, lambda: check_alignment(model, (batch, Y)))
    man = report.manifest
    assert man.strategy == "vjp" and not man.structured
    assert "auto fell back to vjp" in man.choice and "module 'trim' (TrimPadding)" in man.choice
    assert "why: auto fell back" in str(man)


class CountingBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.scale = torch.ones(2, dtype=F64)  # a plain tensor attribute

    def forward(self, x):
        self.calls += 1
        return self.lin(x) * self.scale


class ScalingAttribute(CountingBuffer):
    def forward(self, x):
        self.scale.mul_(1.0)  # in place on a tensor attribute of the user's model
        return self.lin(x) * self.scale


def test_in_place_updates_are_refused_naming_the_tensor_and_the_model_is_left_alone():
    x = torch.randn(4, 3, dtype=F64)
    model = nn.Sequential(nn.Tanh(), CountingBuffer()).double()
    with pytest.raises(UnsupportedModelError, match=r"updates '1.calls' in place \(in module '1'\)"):
        assert_unchanged(model, lambda: jacobian(model, x, strategy="vjp"))
    model = nn.Sequential(nn.Tanh(), ScalingAttribute()).double()
    version = model[1].scale._version
    with pytest.raises(UnsupportedModelError, match="'1.scale' in place"):
        assert_unchanged(model, lambda: check_cms(model, x))
    assert torch.equal(model[1].scale, torch.ones(2, dtype=F64)) and model[1].scale._version > version


class OldStyle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 2 * g


class NoVmap(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return torch.sinh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cosh(x)


class Custom(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn.apply(x)


def _custom(fn):
    inner = nn.Sequential(nn.Linear(4, 4), Custom(fn))
    return nn.Sequential(nn.Linear(3, 4), inner, nn.Linear(4, 2)).double()


def test_custom_autograd_functions_are_refused_naming_the_module():
    x = torch.randn(4, 3, dtype=F64)
    with pytest.raises(UnsupportedModelError, match=r"module '1.1' \(Custom\).*setup_context"):
        jacobian(_custom(OldStyle), x, strategy="vjp")
    model = _custom(NoVmap)
    with pytest.raises(UnsupportedModelError, match=r"without vmap support, in module '1.1' \(Custom\)"):
        jacobian(model, x, strategy="jacrev")
    # check_cms needs reverse mode only: the function without vmap or forward-mode support is measured
    report = assert_unchanged(model, lambda: check_cms(model, x))  # auto falls back from vmap
    assert report.holds and report.kind == "linear-in"
    assert_matches_reference(model, x, strategies=("vjp", "auto"))  # no vmap over its forward: exact


class BatchCentred(nn.Module):
    """Centres the hidden layer over the batch dimension by hand: samples interact in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 5)
        self.b = nn.Linear(5, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.tanh(h - h.mean(0, keepdim=True)))


@pytest.mark.parametrize(
    "model",
    [
        BatchCentred(),
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)),
    ],
    ids=["centred-by-hand", "batch-norm-without-running-stats"],
)
def test_samples_that_interact_in_eval_mode_are_refused_per_sample_and_auto_falls_back(model):
    model, x = model.double(), torch.randn(6, 3, dtype=F64)
    for strategy in PER_SAMPLE:
        with pytest.raises(UnsupportedModelError, match="samples interact.*strategy='vjp'"):
            jacobian(model, x, strategy=strategy)
    man = check_alignment(model, (x, torch.randn(6, 2, dtype=F64))).manifest
    assert man.strategy == "vjp" and "auto fell back to vjp over the whole batch: the samples interact" in man.choice
    assert_matches_reference(model, x, strategies=("vjp", "auto"))  # the whole batch, as the model computes it


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x).reshape(4, 2)  # assumes 4 samples


def test_a_model_that_cannot_run_on_a_sub_batch_is_refused_per_sample():
    model, x = FixedBatch().double(), torch.randn(4, 3, dtype=F64)
    with pytest.raises(UnsupportedModelError, match="failed on a sub-batch.*strategy='vjp'"):
        jacobian(model, x, strategy="jacrev")
    assert_matches_reference(model, x, strategies=("vjp",))


@pytest.mark.parametrize("cid", ["mlp", "cnn", "resnet-bn", "groupnorm-cnn", "tied-embedding"])
def test_no_false_refusal_in_float32(cid):
    case = CASES[cid]
    model = case.model(torch.float32)
    J = jacobian(model, case.data(8, torch.float32), strategy="jacrev")  # no UnsupportedModelError
    assert J.dtype == torch.float32 and J.shape[1] == sum(p.numel() for p in model.parameters())
    assert torch.isfinite(J).all()


def test_the_model_is_unchanged_when_a_measurement_fails():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), Custom(OldStyle), nn.Linear(4, 2)).double()
    model.train()
    x = torch.randn(5, 3, dtype=F64)
    with pytest.raises(UnsupportedModelError):
        assert_unchanged(model, lambda: jacobian(model, x, mode="batch"))
