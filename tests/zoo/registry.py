"""The zoo: third-party models as users bring them, built from code and configs only (nothing downloaded).

Each :class:`ZooModel` builds a seeded model (in eval mode) and seeded inputs, and names the library it
needs. ``REGISTRY`` holds them all; the tests (``tests/zoo/test_zoo.py``) and the benchmark
(``python -m bench.zoo``) use the same entries. Models from ``torchvision`` and ``timm`` need a CUDA build
of torch (the wheels on the package index are built against it), so their tests carry the ``zoo`` marker
and run in a second environment (``docs/benchmarks.md#the-zoo``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 3


@dataclass(frozen=True)
class ZooModel:
    """A third-party model and its inputs.

    Attributes
    ----------
    id
        Readable name.
    build
        Returns the model, seeded, in eval mode (float32, as users have it).
    inputs
        ``inputs(n)``: ``n`` seeded samples.
    needs
        The library the model comes from (``""``: torch only).
    output
        The output selector to pass (``None``: the model returns a tensor).
    mode
        The measurement mode the tests and the benchmark use.
    cms
        The status ``check_cms`` must give (from what the function is: an affine or linear-in-a-module
        output layer gives ``holds``).
    d1
        The status of the alignment condition D1 that ``check_alignment`` must give on the test probe
        (``d ≫ nm``, so ``holds`` unless the model's outputs barely depend on its inputs).
    vmap
        Whether ``vmap`` can run the model over samples (recurrent layers and a padding mask read in
        Python cannot): ``auto`` must fall back, and say so, when it cannot.
    """

    id: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], object]
    needs: str = ""
    output: object = None
    mode: str = "eval"
    cms: str = "holds"
    d1: str = "holds"
    vmap: bool = True

    def available(self) -> str:
        """``""`` when the library imports, otherwise why not (a CUDA torchvision beside a CPU torch fails to load)."""
        if not self.needs:
            return ""
        try:
            importlib.import_module(self.needs)
        except Exception as exc:  # noqa: BLE001 - ImportError, or a RuntimeError of a mismatched build
            return f"{self.needs} does not import here ({type(exc).__name__}: {str(exc)[:120]})"
        return ""

    def model(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        """Build the model, seeded, with non-trivial batch-norm statistics, in eval mode and ``dtype``."""
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = self.build()
            for mod in model.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                    mod.running_mean.uniform_(-0.2, 0.2)
                    mod.running_var.uniform_(0.5, 1.5)
        return model.to(dtype).eval()

    def data(self, n: int, dtype: torch.dtype = torch.float32) -> object:
        """``n`` seeded samples; floating tensors in ``dtype``."""
        with torch.random.fork_rng():
            torch.manual_seed(1)
            x = self.inputs(n)
        if isinstance(x, dict):
            return {k: v.to(dtype) if v.is_floating_point() else v for k, v in x.items()}
        return x.to(dtype)


# -- Hugging Face transformers, from configs -------------------------------------------------------------

VOCAB, LENGTH = 30, 6


def _tokens(n: int) -> dict[str, torch.Tensor]:
    """Token ids and a padding mask: every other sample padded after 3 tokens."""
    ids = torch.randint(1, VOCAB, (n, LENGTH))
    mask = torch.ones(n, LENGTH, dtype=torch.long)
    mask[::2, 3:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, num_labels=CLASSES)
    return BertForSequenceClassification(config)


def _distilbert() -> nn.Module:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=VOCAB, dim=8, n_layers=2, n_heads=2, hidden_dim=16,
                              max_position_embeddings=16, num_labels=CLASSES)
    return DistilBertForSequenceClassification(config)


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_embd=8, n_layer=2, n_head=2, n_positions=16)
    return GPT2LMHeadModel(config)  # the LM head is tied to the token embedding


def _last_token_logits(out: object) -> torch.Tensor:
    return out.logits[:, -1]


# -- torch-only models ------------------------------------------------------------------------------------


class RecurrentClassifier(nn.Module):
    """A GRU or LSTM over a sequence, its last hidden state into a linear head."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cell(4, 8, batch_first=True)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class FunctionalHead(nn.Module):
    """Hidden layer as a module, output layer as ``F.linear`` on raw parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 10), nn.GELU())
        self.w = nn.Parameter(0.3 * torch.randn(CLASSES, 10))
        self.b = nn.Parameter(torch.zeros(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.body(x), self.w, self.b)


def _weight_norm_head() -> nn.Module:
    head = nn.utils.parametrizations.weight_norm(nn.Linear(10, CLASSES))
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), head)


def _spectral_norm_hidden() -> nn.Module:
    hidden = nn.utils.parametrizations.spectral_norm(nn.Linear(6, 10))
    return nn.Sequential(hidden, nn.Tanh(), nn.Linear(10, CLASSES))


def _frozen_backbone() -> nn.Module:
    backbone = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                             nn.Flatten())
    for p in backbone.parameters():
        p.requires_grad_(False)
    return nn.Sequential(backbone, nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, CLASSES))


# -- torchvision and timm (a CUDA build of torch) ------------------------------------------------------------


def _torchvision(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as models

        return getattr(models, name)(num_classes=CLASSES, **kwargs)

    return build


def _groupnorm_resnet() -> nn.Module:
    import torchvision.models as models

    return models.resnet18(num_classes=CLASSES, norm_layer=lambda c: nn.GroupNorm(4, c))


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)

    return build


def _images(size: int) -> Callable[[int], torch.Tensor]:
    return lambda n: torch.randn(n, 3, size, size)


REGISTRY = {
    z.id: z
    for z in [
        ZooModel("hf-bert-padding", _bert, _tokens, needs="transformers", output="logits", vmap=False),
        ZooModel("hf-distilbert", _distilbert, _tokens, needs="transformers", output="logits", vmap=False),
        ZooModel("hf-gpt2-tied", _gpt2, _tokens, needs="transformers", output=_last_token_logits, vmap=False),
        ZooModel("gru-classifier", lambda: RecurrentClassifier(nn.GRU), lambda n: torch.randn(n, 5, 4), vmap=False),
        ZooModel("lstm-classifier", lambda: RecurrentClassifier(nn.LSTM), lambda n: torch.randn(n, 5, 4),
                 vmap=False),
        ZooModel("functional-head", FunctionalHead, lambda n: torch.randn(n, 6)),
        ZooModel("weight-norm-head", _weight_norm_head, lambda n: torch.randn(n, 6)),
        ZooModel("spectral-norm", _spectral_norm_hidden, lambda n: torch.randn(n, 6)),
        ZooModel("frozen-backbone", _frozen_backbone, lambda n: torch.randn(n, 2, 6, 6)),
        ZooModel("tv-resnet18", _torchvision("resnet18"), _images(32), needs="torchvision"),
        ZooModel("tv-resnet18-batch", _torchvision("resnet18"), _images(32), needs="torchvision", mode="batch"),
        # at torchvision's initialisation these two give outputs that differ between 32×32 inputs by 6e-10
        # (MobileNetV3) and 7e-13 (EfficientNet) of their size: J's rows of different samples are nearly
        # equal, so D1 fails (timm's EfficientNet, initialised otherwise, differs by 1e-4 and holds)
        ZooModel("tv-mobilenet-v3-small", _torchvision("mobilenet_v3_small"), _images(32), needs="torchvision",
                 d1="refuted"),
        ZooModel("tv-efficientnet-b0", _torchvision("efficientnet_b0"), _images(32), needs="torchvision",
                 d1="refuted"),
        ZooModel("tv-resnet18-groupnorm", _groupnorm_resnet, _images(32), needs="torchvision"),
        ZooModel("timm-convnext-atto", _timm("convnext_atto"), _images(32), needs="timm"),
        ZooModel("timm-vit-tiny", _timm("vit_tiny_patch16_224", img_size=32, patch_size=8), _images(32),
                 needs="timm"),
        ZooModel("timm-efficientnet-droppath", _timm("efficientnet_b0", drop_path_rate=0.2), _images(32),
                 needs="timm"),
    ]
}

#: The entries that run beside the CPU torch (CI); the others need torchvision or timm (the ``zoo`` marker).
CPU_TORCH = tuple(k for k, z in REGISTRY.items() if z.needs in ("", "transformers"))
