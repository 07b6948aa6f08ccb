"""Any model a user brings (issue 5): structured inputs and outputs, the precision policy, the
measurement manifest, dropout, clear refusals, and bad-input errors (THEORY §1, §3, §7).

Every Jacobian and Gram here is held to ``diagnostics.reference`` in float64 at 1e-10.
"""

import contextlib
import copy
import dataclasses
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from cases import CASES, IO_CASES
from torch import nn
from torch.utils.data import TensorDataset

from diagnostics import (
    DiagnosticsError,
    InsufficientMemoryError,
    MeasurementManifest,
    Spectrum,
    UnsupportedModelError,
    check_alignment,
    check_cms,
    jacobian,
    ntk_gram,
    reference_jacobian,
)
from diagnostics.engine import FunctionalModel

F64 = torch.float64
ATOL = 1e-10
PER_SAMPLE = ("structured", "jacrev")

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one intra-op thread (on a loaded 2-core machine, threads spin ~50× slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_matches_reference(model, x, strategies=("structured", "jacrev", "vjp"), **kwargs):
    """``J`` and ``K`` of every strategy equal the naive autograd loop in float64 to 1e-10."""
    J_ref = reference_jacobian(model, x, **kwargs)
    for strategy in strategies:
        J = jacobian(model, x, strategy=strategy, **kwargs)
        K = ntk_gram(model, x, strategy=strategy, **kwargs)
        assert J.dtype == F64 and J.shape == J_ref.shape, strategy
        where = lambda s, st=strategy: f"{st}: {s}"  # noqa: E731
        torch.testing.assert_close(J, J_ref, rtol=0, atol=ATOL, msg=where)
        torch.testing.assert_close(K, J_ref @ J_ref.T, rtol=0, atol=ATOL, msg=where)
    return J_ref


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "objects": {k: id(v) for k, v in model.state_dict(keep_vars=True).items()},
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "hooks": {
            name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for name, m in model.named_modules()
        },
        "track": {name: getattr(m, "track_running_stats", None) for name, m in model.named_modules()},
        "tf32": (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32),
    }


def assert_unchanged(model: nn.Module, fn):
    """Run ``fn()`` and check the model is exactly as before: parameters, buffers (running statistics,
    ``num_batches_tracked``), tensor identities, every module's train/eval mode, ``requires_grad``
    flags, gradients, hooks, ``track_running_stats``, and the global TF32 switches."""
    before = _snapshot(model)
    result = fn()
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{k} changed"
    for key in ("objects", "training", "requires_grad", "hooks", "track", "tf32"):
        assert after[key] == before[key], key
    for k, g in before["grads"].items():
        assert (g is None and after["grads"][k] is None) or torch.equal(g, after["grads"][k]), k
    return result


# ----------------------------------------------------------------------------------------------
# 1. Inputs and outputs


def test_transformer_with_dict_batch_matches_reference_for_every_strategy():
    case = IO_CASES["transformer-dict"]
    model, batch = case.model(), case.data(4)
    assert batch["input_ids"].dtype == torch.int64 and (batch["attention_mask"] == 0).any()
    J = assert_matches_reference(model, batch, output=case.output)
    assert J.shape == (4 * 3, sum(p.numel() for p in model.parameters()))


def test_per_token_outputs_are_flattened_in_c_order():
    """Row ``i·m + t·C + c`` is ``∂ token_logits[i, t, c] / ∂θ``, checked against plain autograd."""
    case = IO_CASES["transformer-dict"]
    model, batch = case.model(), case.data(3)
    select = lambda out: out["token_logits"]  # noqa: E731  (a callable selector)
    J = jacobian(model, batch, output=select, strategy="jacrev")
    T, C = batch["input_ids"].shape[1], 3
    assert J.shape[0] == 3 * T * C
    model.eval()
    out = model(**batch)["token_logits"]
    for i, t, c in [(0, 0, 0), (1, 2, 1), (2, T - 1, C - 1)]:
        grads = torch.autograd.grad(out[i, t, c], list(model.parameters()), retain_graph=True)
        row = torch.cat([g.reshape(-1) for g in grads])
        torch.testing.assert_close(J[i * T * C + t * C + c], row, rtol=0, atol=ATOL)


class PairModel(nn.Module):
    """Takes two positional tensors and returns a tuple ``(logits, hidden)``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, z: torch.Tensor):
        h = torch.tanh(self.a(x) + self.b(z))
        return self.head(h), h


@dataclasses.dataclass
class Output:
    logits: torch.Tensor


class ObjectOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return Output(self.lin(x))


def test_tuple_inputs_and_tuple_outputs_with_an_index():
    model = PairModel().double()
    x = (torch.randn(5, 3, dtype=F64), torch.randn(5, 2, dtype=F64))
    J = assert_matches_reference(model, x, output=0)
    assert J.shape == (10, sum(p.numel() for p in model.parameters()))
    J_hidden = jacobian(model, x, output=1)
    assert J_hidden.shape[0] == 5 * 4


def test_output_objects_need_a_selector_and_accept_an_attribute_name():
    model, x = ObjectOutput().double(), torch.randn(4, 3, dtype=F64)
    with pytest.raises(DiagnosticsError, match="output='logits'"):
        jacobian(model, x)
    torch.testing.assert_close(jacobian(model, x, output="logits"), jacobian(model.lin, x), rtol=0, atol=0)
    with pytest.raises(DiagnosticsError, match="cannot select output 'scores'.*keys"):
        jacobian(IO_CASES["transformer-dict"].model(), IO_CASES["transformer-dict"].data(2), output="scores")


@pytest.mark.parametrize("cid", ["groupnorm-cnn", "tied-embedding", "dropout-mlp"])
def test_third_party_style_models_match_reference(cid):
    case = CASES[cid]
    assert_matches_reference(case.model(), case.data(5))


# ----------------------------------------------------------------------------------------------
# 2. Precision policy


def test_float64_end_to_end_on_a_float32_transformer():
    case = IO_CASES["transformer-dict"]
    model, batch = case.model(torch.float32), case.data(3)
    J = jacobian(model, batch, output="logits", dtype=F64, strategy="jacrev")
    assert J.dtype == F64
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model is never cast
    J_ref = reference_jacobian(copy.deepcopy(model).double(), batch, output="logits")
    torch.testing.assert_close(J, J_ref, rtol=0, atol=ATOL)
    report = check_alignment(model, (batch, torch.tensor([0, 1, 2])), loss="ce", output="logits", dtype=F64)
    assert report.dtype == "float64" and report.rank_rule == "λ_max · nm · eps(float64)"
    man = report.manifest
    assert (man.model_dtype, man.compute_dtype) == ("float32", "float64")
    assert "computed in float64 (the model itself is not cast)" in str(report)


def test_non_psd_gram_warns_and_round_off_does_not():
    with pytest.warns(RuntimeWarning, match="not positive semi-definite.*-1.000e-01"):
        s = Spectrum.of(torch.diag(torch.tensor([1.0, -0.1], dtype=F64)))
    assert s.min_eigenvalue == pytest.approx(-0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = Spectrum.of(torch.diag(torch.tensor([1.0, -1e-17], dtype=F64)))
    assert s.min_eigenvalue == pytest.approx(-1e-17) and s.rank == 1


def test_tf32_is_off_while_measuring_and_the_users_switches_come_back():
    model = CASES["mlp"].model()
    fm = FunctionalModel(model)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
        with fm.measuring():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        report = check_alignment(model, (CASES["mlp"].data(6), torch.randn(6, 3, dtype=F64)))
        assert "the user's switches (matmul=True, cudnn=True) restored" in report.manifest.tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_every_report_states_the_precision_policy_and_tolerance():
    case = CASES["mlp"]
    model, x = case.model(torch.float32), case.data(8, torch.float32)
    report = check_alignment(model, (x, torch.randint(0, 3, (8,))), loss="ce")
    text = str(report)
    for phrase in ("TF32 off while measuring", "decomposed in float64", "λ_max · nm · eps(float32)",
                   "λ_min", "RuntimeWarning when λ_min < −rank_tol", "computed in float32"):
        assert phrase in text, phrase
    assert report.to_dict()["manifest"]["precision"] == list(report.manifest.precision)
    cms_text = str(check_cms(model, x))
    assert "Measurement manifest" in cms_text and "TF32 off while measuring" in cms_text


# ----------------------------------------------------------------------------------------------
# 3. The manifest


def test_manifest_of_a_transformer_names_inputs_output_parameters_and_dropout():
    case = IO_CASES["transformer-dict"]
    model, batch = case.model(), case.data(4)
    Y = torch.randn(4, 3, dtype=F64)
    report = check_alignment(model, (batch, Y), output="logits", params=["layer", "head"], probe_size=None)
    man = report.manifest
    assert man.inputs == (
        "dict {input_ids: int64 (4, 5), attention_mask: int64 (4, 5)} passed as model(**inputs)"
    )
    assert "output['logits'], per-sample shape (3,) flattened in C order → m = 3" in man.output
    assert (man.n_samples, man.n_outputs) == (4, 3)
    names = [k for k, _ in model.named_parameters()]
    assert [k for k, _ in man.included] == [k for k in names if k.startswith(("layer.", "head."))]
    assert man.n_params == report.n_params == sum(c for _, c in man.included)
    assert {k for k, _, _ in man.excluded} == {"embed.weight", "pos", "norm.weight", "norm.bias"}
    assert {why for _, _, why in man.excluded} == {"not selected by params="}
    assert man.n_params + sum(c for _, c, _ in man.excluded) == sum(p.numel() for p in model.parameters())
    dropout = {note.path for note in man.dropout}
    assert {"layer.dropout", "layer.dropout1", "layer.dropout2", "layer.self_attn"} <= dropout
    assert all("inactive" in note.handling for note in man.dropout)
    assert man.interacting == ()
    # head is called twice (pooled and per-token logits): the structured path must leave it to jacrev
    assert man.strategy == "structured" and "head.weight" not in man.structured
    assert set(man.structured) <= {k for k, _ in man.included}
    text = str(man)
    assert "parameters excluded (not selected by params=): 4 tensors" in text
    d = json.loads(json.dumps(report.to_dict()))["manifest"]
    assert d["n_params"] == man.n_params and d["mode"] == "eval"
    with pytest.raises(dataclasses.FrozenInstanceError):
        man.mode = "batch"


def test_manifest_reports_tied_weights_once_and_frozen_parameters():
    case = CASES["tied-embedding"]
    model, x = case.model(), case.data(6)
    model.mix.bias.requires_grad_(False)
    Y = torch.randn(6, 9, dtype=F64)
    report = assert_unchanged(model, lambda: check_alignment(model, (x, Y), probe_size=None))
    man = report.manifest
    assert man.aliases == (("out.weight", "embed.weight"),)
    assert "out.weight" not in dict(man.included)
    assert man.n_params == sum(p.numel() for p in model.parameters())  # the shared tensor counted once
    assert any("mix.bias has requires_grad=False but was measured" in note for note in man.notes)
    assert "tied: out.weight is embed.weight" in str(report)


@pytest.mark.parametrize("mode", ["eval", "batch"])
def test_manifest_says_how_batch_norm_was_handled(mode):
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(6)
    report = check_cms(model, x, mode=mode)
    man = report.manifest
    assert [n.path for n in man.interacting] == ["bn0", "bn1", "bn2"]
    expected = {"eval": "running statistics (eval mode)", "batch": "batch statistics of the measured batch"}
    assert all(expected[mode] in n.handling for n in man.interacting)
    assert man.mode == mode and man.strategy == ("structured" if mode == "eval" else "vjp")
    assert report.to_dict()["manifest"]["interacting"][0]["path"] == "bn0"


def test_manifest_needs_the_validation_forward_or_the_output_count():
    fm = FunctionalModel(CASES["mlp"].model())
    x, _ = fm.prepare(CASES["mlp"].data(3))
    with pytest.raises(ValueError, match="check_forward"):
        MeasurementManifest.build(fm, x, strategy="vjp")
    man = MeasurementManifest.build(fm, x, strategy="jvp/vjp", n_outputs=3)
    assert man.n_outputs == 3 and "LSQR" in str(man)


# ----------------------------------------------------------------------------------------------
# 4. Dropout


def test_dropout_is_off_in_both_modes_and_the_train_mode_is_restored():
    case = CASES["dropout-mlp"]
    model, x = case.model(), case.data(6)
    model.train()
    J_eval = reference_jacobian(model, x)
    for mode in ("eval", "batch"):
        J = assert_unchanged(model, lambda mode=mode: jacobian(model, x, mode=mode, strategy="vjp"))
        torch.testing.assert_close(J, J_eval, rtol=0, atol=ATOL)
    assert all(m.training for m in model.modules())
    # and by hand: the eval-mode model's Jacobian, via plain autograd on a copy
    frozen = copy.deepcopy(model).eval()
    out = frozen(x)
    row = torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[2, 1], list(frozen.parameters()))])
    torch.testing.assert_close(J_eval[2 * 3 + 1], row, rtol=0, atol=ATOL)


class AlwaysDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return F.dropout(self.lin(x), 0.5, training=True)  # active even in eval mode


def test_randomness_active_in_eval_mode_is_refused_for_every_strategy():
    model, x = nn.Sequential(nn.Tanh(), AlwaysDropout()).double(), torch.randn(5, 4, dtype=F64)
    for strategy in ("structured", "jacrev", "vjp"):
        with pytest.raises(UnsupportedModelError, match="not reproducible"):
            jacobian(model, x, strategy=strategy)


# ----------------------------------------------------------------------------------------------
# 5. Clear refusals, never silent skipping


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
    assert_matches_reference(model, batch, strategies=("vjp",))


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
    with pytest.raises(UnsupportedModelError, match=r"forward-mode derivative.*module '1.1'"):
        assert_unchanged(model, lambda: check_cms(model, x))
    assert_matches_reference(model, x, strategies=("vjp",))  # no vmap over its forward: exact


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
def test_samples_that_interact_in_eval_mode_are_refused_per_sample(model):
    model, x = model.double(), torch.randn(6, 3, dtype=F64)
    for strategy in (*PER_SAMPLE, "auto"):
        with pytest.raises(UnsupportedModelError, match="samples interact.*strategy='vjp'"):
            jacobian(model, x, strategy=strategy)
    with pytest.raises(UnsupportedModelError, match="samples interact"):
        check_alignment(model, (x, torch.randn(6, 2, dtype=F64)))
    assert_matches_reference(model, x, strategies=("vjp",))  # the whole batch, as the model computes it


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


# ----------------------------------------------------------------------------------------------
# 6. The model is unchanged by every measurement


@pytest.mark.parametrize("mode", ["eval", "batch"])
def test_measuring_never_changes_a_train_mode_resnet(mode):
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(6)
    model.train()
    model.bn1.eval()  # a mixed state must come back exactly
    model.stem.weight.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    Y = torch.randn(6, 3, dtype=F64)
    assert_unchanged(model, lambda: jacobian(model, x, mode=mode))
    assert_unchanged(model, lambda: ntk_gram(model, x, mode=mode))
    assert_unchanged(model, lambda: check_alignment(model, (x, Y), mode=mode, probe_size=None))
    assert_unchanged(model, lambda: check_cms(model, x, mode=mode))
    assert model.bn0.num_batches_tracked.item() == 0


def test_the_model_is_unchanged_when_a_measurement_fails():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), Custom(OldStyle), nn.Linear(4, 2)).double()
    model.train()
    with pytest.raises(UnsupportedModelError):
        assert_unchanged(model, lambda: jacobian(model, torch.randn(5, 3, dtype=F64), mode="batch"))


# ----------------------------------------------------------------------------------------------
# 7. Bad inputs: the documented exception, with a message naming the problem


def _with_nan_weight():
    model = CASES["mlp"].model()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    return model


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: (CASES["mlp"].model(), (torch.randn(4, 5, dtype=F64), torch.randn(3, 5, dtype=F64))),
         DiagnosticsError, r"disagree on the batch size.*\[3, 4\]"),
        (lambda: (CASES["mlp"].model(), torch.randn(4, 6, dtype=F64)),
         DiagnosticsError, r"failed on these inputs in module '0' \(Linear\).*shapes cannot be multiplied"),
        (lambda: (CASES["mlp"].model(), torch.full((3, 5), float("nan"), dtype=F64)),
         DiagnosticsError, "inputs contain NaN or inf"),
        (lambda: (_with_nan_weight(), torch.randn(3, 5, dtype=F64)),
         DiagnosticsError, "parameter '0.weight' contains NaN or inf"),
        (lambda: (nn.Sequential(nn.Linear(5, 2), Log()).double(), torch.randn(8, 5, dtype=F64)),
         DiagnosticsError, "outputs contain NaN or inf"),
        (lambda: (CASES["mlp"].model(), torch.zeros(0, 5, dtype=F64)), DiagnosticsError, "empty"),
        (lambda: (CASES["mlp"].model(), {}), DiagnosticsError, "inputs are empty"),
        (lambda: (nn.Sequential(nn.Tanh()), torch.randn(3, 5)), DiagnosticsError, "no parameters"),
        (lambda: (CASES["mlp"].model(), torch.randn(3, 5, dtype=F64)),
         DiagnosticsError, "selection is empty"),
    ],
    ids=["batch-sizes", "feature-size", "nan-input", "nan-parameter", "nan-output", "empty-batch",
         "empty-dict", "no-parameters", "empty-selection"],
)
def test_bad_inputs_raise_a_documented_error_naming_the_problem(make, error, message):
    model, x = make()
    params = (lambda name, p: False) if "selection" in message else None  # selects nothing
    with pytest.raises(error, match=message):
        jacobian(model, x, params=params)


def test_bad_data_and_targets_are_refused():
    model, x = CASES["mlp"].model(), CASES["mlp"].data(6)
    cases = [
        ((x, torch.randn(5, 3, dtype=F64)), {}, "targets have shape .5, 3. but the inputs hold 6"),
        ((x, torch.randn(6, 4, dtype=F64)), {}, r"do not fit the model's outputs, which are \(6, 3\)"),
        ((x, torch.tensor([0, 1, 2, 3, 0, 1])), {"loss": "ce"}, r"must lie in \[0, 2\]"),
        ((x, torch.full((6, 3), float("inf"), dtype=F64)), {}, "targets contain NaN or inf"),
        (TensorDataset(torch.zeros(0, 5), torch.zeros(0)), {}, "the data set is empty"),
        ((x, torch.zeros(6, 3, dtype=F64)), {}, "alignment target Q is zero"),
    ]
    for data, kwargs, message in cases:
        with pytest.raises(DiagnosticsError, match=message):
            assert_unchanged(model, lambda d=data, k=kwargs: check_alignment(model, d, probe_size=None, **k))


def test_a_gram_over_the_memory_budget_is_refused_before_any_work():
    case = IO_CASES["transformer-dict"]
    model, batch = case.model(), case.data(40)
    with pytest.raises(InsufficientMemoryError, match=r"NTK Gram \(120 × 120.*memory budget of 1.0 KiB"):
        assert_unchanged(model, lambda: ntk_gram(model, batch, output="logits", memory_budget=1024))
    with pytest.raises(InsufficientMemoryError, match=r"the Jacobian \(120 × \d+\)"):
        jacobian(model, batch, output="logits", memory_budget=1024)


@contextlib.contextmanager
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def test_float64_measurements_of_real_models_raise_no_psd_warning():
    with _no_warnings():
        case = IO_CASES["transformer-dict"]
        check_alignment(case.model(), (case.data(5), torch.randn(5, 3, dtype=F64)), output="logits")
        case = CASES["groupnorm-cnn"]
        check_alignment(case.model(), (case.data(6), torch.randint(0, 3, (6,))), loss="ce")
