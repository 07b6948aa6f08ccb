r"""Model families the project did not write, for width studies: a BERT from its config and a torchvision-style ResNet.

A width study (``diagnostics.width.study``, ``python -m diagnostics width-report --family``) asks about any family
that takes its width as an argument. These are two such families as a user would write them, with their data:

- :func:`make_bert`: Hugging Face ``BertForSequenceClassification`` built from a ``BertConfig`` (nothing
  downloaded) whose width is ``hidden_size``, with the feed-forward size ``intermediate_size = 4 · hidden_size``;
  it classifies the token sequences of :func:`counting_task` (which of two marker tokens occurs more often);
- :func:`make_resnet`: a ResNet of torchvision's BasicBlocks (two 3×3 convolutions with batch norm and a skip
  connection) whose stages have ``width``, ``2·width`` and ``4·width`` channels, on the bundled 8×8 digits
  (:func:`digits`).

From Python::

    from diagnostics.width import study
    from examples.width_families import counting_task, make_bert
    task = counting_task()
    result = study(make_bert, task["data"], test=task["test"], widths=[16, 32, 64, 128], seeds=[0, 1],
                   optimizer="adamw", lr=1e-3, loss="ce", batch_size=32, output="logits")

The transformer study of ``docs/width.md#your-own-model-family`` (4 widths × 2 seeds, the study's default steps
and records, a probe of 64 sequences), its report written to ``DIR``::

    python -m examples.width_families --out DIR

From the command line (run in the repository's root, which is on the import path)::

    python -m diagnostics width-report --family examples.width_families:make_resnet \\
        --data examples.width_families:digits --optimizer sgd --lr 0.05 --momentum 0.9 --batch-size 32 \\
        --loss ce --widths 4,8,16,32 --seeds 0,1

The library never imports this module.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diagnostics.data import DataSplit, load_dataset
from diagnostics.width import Study, study

__all__ = ["BasicBlock", "ResNet", "bert_study", "counting_task", "digits", "make_bert", "make_resnet"]

#: Tokens of :func:`counting_task`: padding, the classification token, the two markers; the rest are fillers.
PAD, CLS, MARK_A, MARK_B = 0, 1, 2, 3
#: Vocabulary size and the longest sequence (the classification token included) of :func:`counting_task`.
VOCAB, LENGTH = 16, 24


def counting_task(n_train: int = 512, n_test: int = 512, *, seed: int = 0) -> dict[str, tuple]:
    """Return a sequence classification task: does marker ``A`` occur more often than marker ``B``.

    Every sequence is ``[CLS]`` followed by 7 to 23 tokens and padding to :data:`LENGTH`; each token is ``A`` or
    ``B`` with probability 1/5 each, else one of 12 filler tokens. The label is ``1`` when ``A`` occurs more often
    than ``B``, ``0`` when less often; sequences with as many of each are drawn again, so the classes are balanced
    by symmetry, and the counts differ by one in about two of five. No single position tells the label: a model must
    count across the whole sequence and ignore the padding, which the attention mask marks.

    Parameters
    ----------
    n_train, n_test
        Sizes of the training and test sets.
    seed
        Seed of the draw: the same seed gives the same task.

    Returns
    -------
    dict
        ``{"data": (X, y), "test": (X, y)}`` with ``X = {"input_ids", "attention_mask"}`` (``int64``,
        ``(n, LENGTH)``) and ``y`` the labels (``int64``, ``(n,)``): what ``--data`` of ``width-report`` takes.
    """
    generator = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    ids, labels = [], []
    while sum(len(y) for y in labels) < n:
        size = 4 * n
        body = torch.randint(MARK_B + 1, VOCAB, (size, LENGTH - 1), generator=generator)
        draw = torch.rand(size, LENGTH - 1, generator=generator)
        body = torch.where(draw < 0.2, MARK_A, torch.where(draw < 0.4, MARK_B, body))
        lengths = torch.randint(7, LENGTH, (size, 1), generator=generator)
        body = torch.where(torch.arange(LENGTH - 1) < lengths, body, PAD)
        difference = (body == MARK_A).sum(1) - (body == MARK_B).sum(1)
        keep = difference != 0
        ids.append(torch.cat([torch.full((int(keep.sum()), 1), CLS), body[keep]], 1))
        labels.append((difference[keep] > 0).long())
    input_ids, y = torch.cat(ids)[:n], torch.cat(labels)[:n]
    X = {"input_ids": input_ids, "attention_mask": (input_ids != PAD).long()}
    split = {k: v[:n_train] for k, v in X.items()}, {k: v[n_train:] for k, v in X.items()}
    return {"data": (split[0], y[:n_train]), "test": (split[1], y[n_train:])}


def make_bert(width: int) -> nn.Module:
    """Return a two-layer ``BertForSequenceClassification`` with ``hidden_size = width`` (two heads, no dropout).

    The feed-forward size is ``intermediate_size = 4 · width``, as in BERT; two attention heads, so ``width`` must
    be even; dropout is off, so the loss the optimiser descends is the loss measured on the probe. Attention is
    the eager (matrix-product) implementation, whose backward ``vmap`` batches over the rows of a Jacobian; the
    fused kernel's backward has no batching rule and runs one row at a time. Built from a
    ``BertConfig``: nothing is downloaded. Its output is an object whose ``logits`` a study measures
    (``output="logits"``, ``--model-output logits``).
    """
    import transformers

    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=LENGTH, type_vocab_size=1, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )
    return transformers.BertForSequenceClassification(config)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3×3 convolutions with batch norm and a skip connection.

    The input (or a strided 1×1 projection of it, when the shape changes) is added before the last ReLU.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x))``."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision's ResNet of BasicBlocks, with a channel multiplier and a stem for small images.

    Stage ``i`` has ``blocks[i]`` BasicBlocks of ``width · 2^i`` channels (stride 2 from the second stage on), then
    a global average pool and a linear classifier. The stem is a 3×3 convolution to ``width`` channels with batch
    norm (for 8×8 or 32×32 images, as CIFAR ResNets do; torchvision's 7×7 stride-2 convolution and max pool would
    leave nothing of an 8×8 image). torchvision's initialisation: Kaiming-normal convolutions (fan out), unit
    batch-norm scales.
    """

    def __init__(self, width: int, blocks: tuple[int, ...] = (1, 1, 1), *, in_channels: int = 1,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        stages, inplanes = [], width
        for i, count in enumerate(blocks):
            planes = width * 2 ** i
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*(BasicBlock(inplanes if j == 0 else planes, planes, stride if j == 0 else 1)
                                          for j in range(count))))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(inplanes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images ``(n, in_channels, h, w)``: stem, stages, global average pool, classifier."""
        return self.fc(self.stages(self.stem(x)).mean((2, 3)))


def make_resnet(width: int) -> nn.Module:
    """Return a three-stage ResNet for the digits: one input channel, ten classes.

    One BasicBlock per stage, of ``width``, ``2·width`` and ``4·width`` channels.
    """
    return ResNet(width)


def digits() -> DataSplit:
    """Return the bundled 8×8 digits (scikit-learn's, nothing downloaded): 512 training and 500 test images.

    Images ``(n, 1, 8, 8)``, standardised; labels ``0..9``; a study tests on the test split.
    """
    return load_dataset("digits", n_train=512, n_test=500)


def bert_study(widths: list[int] | None = None, seeds: list[int] | None = None, **options: Any) -> Study:
    """Return the width study of :func:`make_bert` on :func:`counting_task`.

    AdamW (``lr = 10⁻³``) on minibatches of 32, cross-entropy, the logits measured (``theory/recipe.md``: no
    gradient-descent statement applies to this recipe), on a probe of 64 sequences (``n·m = 128``); every other
    setting is :func:`diagnostics.width.study`'s default (300 steps, 6 records) unless ``options`` set it. The
    probe is half the study's default of 128: measuring is about 95 % of a run's time and its Grams grow as
    ``(n·m)² · d``, and 128 sequences would not finish four widths in 15 minutes on two cores (docs/width.md).
    Widths ``16, 32, 64, 128`` (``d`` from 7,554 to 418,818, all above the counting threshold,
    theory/width.md#s1-counting) and seeds ``0, 1`` by default.
    """
    task = counting_task()
    options = {"probe_size": 64, **options}
    return study(make_bert, task["data"], test=task["test"], widths=widths or [16, 32, 64, 128],
                 seeds=seeds or [0, 1], optimizer="adamw", lr=1e-3, loss="ce", batch_size=32, output="logits",
                 **options)


def main(argv: list[str] | None = None) -> int:
    """``python -m examples.width_families --out DIR``: run :func:`bert_study`, write its report, print the time.

    Finished runs are kept in ``DIR/runs/``; a rerun resumes from them.
    """
    parser = argparse.ArgumentParser(description="The width study of a BERT built from its config (AdamW, "
                                                 "minibatches, cross-entropy) and its report.")
    parser.add_argument("--out", type=Path, required=True, help="the report's folder (finished runs in DIR/runs)")
    parser.add_argument("--widths", default="16,32,64,128", help="comma-separated")
    parser.add_argument("--seeds", default="0,1", help="comma-separated")
    parser.add_argument("--jobs", type=int, default=None, help="local processes (default: the CPUs available)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = bert_study([int(w) for w in args.widths.split(",")], [int(s) for s in args.seeds.split(",")],
                        folder=args.out, jobs=args.jobs)
    result.report(args.out)
    print(result)
    print(f"report: {args.out}; wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
