"""Any inputs and outputs a user brings (issue 5): dict and tuple batches, output selectors, and bad
inputs raising the documented error with a message naming the problem (theory/setup.md).

Every Jacobian and Gram here is held to ``diagnostics.reference`` in float64 at 1e-10.
"""

import dataclasses

import pytest
import torch
from cases import CASES, IO_CASES
from helpers import NO_VMAP_FALLBACK_WARNING, ONE_THREAD, assert_matches_reference, assert_unchanged
from torch import nn

from diagnostics import DiagnosticsError, jacobian, ntk_gram, reference_gram, reference_jacobian

F64 = torch.float64
ATOL = 1e-10

pytestmark = [ONE_THREAD, NO_VMAP_FALLBACK_WARNING]


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


# -- bad inputs: the documented exception, with a message naming the problem -------------------------


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


# -- inference mode, half precision, overflow -------------------------------------------------------------


def test_every_measurement_works_inside_inference_mode_and_gives_the_same_numbers(monkeypatch):
    from diagnostics import AlignmentTracker, JacobianOperator, check_alignment, check_cms
    from diagnostics.engine import auto

    monkeypatch.setattr(auto, "JUDGING_SHARE", 0.0)  # auto judges no other plan: the calls below share theirs
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(6)
    y = torch.arange(6) % 3
    K = ntk_gram(model, x)
    with torch.inference_mode():
        x_inference = x.clone()  # an inference tensor
        assert x_inference.is_inference()
        torch.testing.assert_close(jacobian(model, x_inference), jacobian(model, x), rtol=0, atol=0)
        torch.testing.assert_close(ntk_gram(model, x_inference), K, rtol=0, atol=0)
        report = check_alignment(model, (x_inference, y), loss="ce", probe_size=None)
        check_cms(model, x_inference)
        op = JacobianOperator(model, x_inference)
        Kv = op.gram_matvec(torch.ones(op.shape[0], dtype=F64))
        AlignmentTracker(model, (x_inference, y), loss="ce", probe_size=None).measure(0)
    torch.testing.assert_close(Kv, K @ torch.ones(K.shape[0], dtype=F64), rtol=1e-10, atol=1e-10)
    assert report.residual == check_alignment(model, (x, y), loss="ce", probe_size=None).residual
    with torch.inference_mode():
        created = nn.Linear(5, 2)  # parameters created in inference mode
    x5 = CASES["mlp"].data(6, torch.float32)
    torch.testing.assert_close(ntk_gram(created, x5), reference_gram(created, x5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_models_are_measured_in_float32_by_default(half):
    from diagnostics import check_alignment

    model = CASES["mlp"].model(half)
    x = CASES["mlp"].data(6, torch.float32).to(half)
    K = ntk_gram(model, x)
    assert K.dtype == torch.float32
    K_ref = reference_gram(model, x, dtype=F64)  # the same bfloat16/float16 values, differentiated in float64
    assert (K.double() - K_ref).abs().max() <= 1e-5 * K_ref.abs().max()
    man = check_alignment(model, (x, torch.arange(6) % 3), loss="ce", probe_size=None).manifest
    assert man.model_dtype == str(half).replace("torch.", "") and man.compute_dtype == "float64"


class Huge(nn.Module):
    """Outputs of order 1e25: their squared derivatives overflow float32."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 2)

    def forward(self, x):
        return self.lin(x) * 1e25


def test_a_gram_that_overflows_is_refused_with_advice_and_float64_measures_it():
    model, x = Huge(), torch.randn(4, 5)
    assert torch.isfinite(jacobian(model, x)).all()  # J (≈ 1e25) fits float32; J Jᵀ (≈ 1e50) does not
    for strategy in ("auto", "jacrev", "vjp"):
        with pytest.raises(DiagnosticsError, match=r"NTK Gram overflowed in float32.*dtype=torch.float64"):
            assert_unchanged(model, lambda s=strategy: ntk_gram(model, x, strategy=s))
    K = ntk_gram(model, x, dtype=F64)
    assert torch.isfinite(K).all() and K.abs().max() > 1e49


# -- the device rule: inputs on the CPU are copied to the model's device, inputs elsewhere refused ----------


def test_inputs_on_the_cpu_are_copied_to_the_models_device_and_the_manifest_says_so(device):
    from diagnostics import check_alignment

    case = CASES["mlp"]
    model, x = case.model().to(device), case.data(5)
    y = torch.arange(5) % 3
    J = jacobian(model, x)  # the data on the CPU, where data sets live
    assert J.device.type == device.type
    torch.testing.assert_close(J, jacobian(model, x.to(device)), rtol=0, atol=ATOL)
    torch.testing.assert_close(J.cpu(), reference_jacobian(case.model(), x), rtol=0, atol=ATOL)
    moved = device.type != "cpu"
    for data in ((x, y), (x.to(device), y)):
        inputs = check_alignment(model, data, loss="ce", probe_size=None).manifest.inputs
        copied = data[0].device.type == "cpu" and moved
        assert ("copied from the CPU to cuda" in inputs) == copied, inputs


def test_inputs_on_another_device_than_the_model_are_refused_and_nothing_changes(device):
    """A CPU model given inputs on the GPU (or, on any machine, on PyTorch's ``meta`` device) is refused."""
    from diagnostics import AlignmentTracker, JacobianOperator, check_alignment, check_cms

    other = torch.device("meta") if device.type == "cpu" else device
    case = CASES["mlp"]
    model, x = case.model(), case.data(5).to(other)
    y = torch.arange(5) % 3
    calls = {
        "jacobian": lambda: jacobian(model, x),
        "ntk_gram of a tuple": lambda: ntk_gram(model, (x,)),
        "check_alignment": lambda: check_alignment(model, (x, y), loss="ce", probe_size=None),
        "check_cms": lambda: check_cms(model, x),
        "JacobianOperator": lambda: JacobianOperator(model, x),
        "AlignmentTracker": lambda: AlignmentTracker(model, (x, y), loss="ce", probe_size=None).measure(0),
    }
    for call in calls.values():
        with pytest.raises(DiagnosticsError, match=rf"^the inputs are on {other.type}"):
            assert_unchanged(model, call)


# -- probe subsets of data sets ------------------------------------------------------------------------------


class _TokenSamples(torch.utils.data.Dataset):
    """Hugging Face-style samples: dicts of token ids of varying length, with their ``labels``."""

    def __init__(self, n: int, ragged: bool = True) -> None:
        self.lengths = [3 + i % 4 if ragged else 3 for i in range(n)]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.arange(1, self.lengths[i] + 1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor(i % 3)}


def _pad(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    longest = max(len(s["input_ids"]) for s in samples)
    out = {k: torch.stack([nn.functional.pad(s[k], (0, longest - len(s[k]))) for s in samples])
           for k in ("input_ids", "attention_mask")}
    return {**out, "labels": torch.stack([s["labels"] for s in samples])}


def test_dict_samples_with_labels_are_probes_and_a_loaders_collate_fn_pads_them():
    from diagnostics.engine.inputs import probe_data

    data = _TokenSamples(10)
    with pytest.raises(DiagnosticsError, match="padding collate_fn"):
        probe_data(data, 6, 0)  # lengths differ: default_collate cannot stack them
    x, y = probe_data(torch.utils.data.DataLoader(data, batch_size=4, collate_fn=_pad), 6, 0)
    assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].shape[0] == 6 and y.shape == (6,)
    assert x["input_ids"].shape[1] == 6 and (x["attention_mask"].sum(1) == x["input_ids"].ne(0).sum(1)).all()
    x, y = probe_data(_TokenSamples(10, ragged=False), None, 0)
    assert x["input_ids"].shape == (10, 3) and y.tolist() == [i % 3 for i in range(10)]
    listed = [_TokenSamples(10, ragged=False)[i] for i in range(10)]  # a list of dict samples, as Trainer takes
    assert torch.equal(probe_data(listed, 4, 0)[0]["input_ids"],
                       probe_data(_TokenSamples(10, ragged=False), 4, 0)[0]["input_ids"])
    unlabelled = torch.utils.data.DataLoader([{"input_ids": torch.ones(3)}] * 3, batch_size=2)
    with pytest.raises(DiagnosticsError, match="'labels' entry"):
        probe_data(unlabelled, None, 0)


class _Stream(torch.utils.data.IterableDataset):
    """Draws from every global random stream while it yields, as shuffling buffers do."""

    def __iter__(self):
        import random

        import numpy as np

        for i in range(100):
            random.random(), np.random.rand(), torch.rand(())
            yield torch.full((2,), float(i)), torch.tensor(i % 2)


def test_reading_a_probe_leaves_every_global_random_stream_alone():
    import random

    import numpy as np

    from diagnostics.engine.inputs import probe_data

    loader = torch.utils.data.DataLoader(_Stream(), batch_size=8)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    x, y = probe_data(loader, 12, 0)  # creating the loader's iterator draws its base seed from torch's stream
    assert x.shape == (12, 2) and y.tolist() == [i % 2 for i in range(12)]
    assert torch.equal(torch.rand(3), expected[0]) and (np.random.rand(3) == expected[1]).all()
    assert random.random() == expected[2]
