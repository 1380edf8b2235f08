"""Synthetic data with a real input -> label relation, for the learnable-signal check.

Random labels carry nothing a model can carry from one batch to another, so the healthy zoo's
own batches cannot pass ``assert_learns_signal``. Each generator here draws batches from one
fixed task (the same ``TASK`` seed for every batch), so a relation learned on one batch holds on
the next, and the relation is simple enough to show after one or two steps:

- images and vectors: each class has a fixed random template; a sample is its class's template
  plus as much noise (nearest-template classification),
- token sequences: each class draws its tokens from its own slice of the vocabulary (a bag of
  words), and a seq2seq target repeats a class token,
- language modelling: every row follows one fixed successor table (a deterministic bigram),
- packed sequences: the target is the mean of the first feature over the valid steps.

``SIGNAL[name](n, seed)`` gives a batch of ``n`` samples in the zoo model's own format;
``SIZES[name]`` the (train, holdout) sizes used: holdouts of a few dozen samples, because the
check's permutation baseline needs enough samples to tell a relation from chance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from architectures import VOCAB, T

TASK = 1234  # one task for every batch: the relation is shared by train and holdout
CLASSES = 4  # fewer classes than outputs: each class recurs within a small batch


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _labels(n: int, seed: int, classes: int = CLASSES) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=_generator(seed))


def templated(n: int, seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A class template plus unit noise, scaled back to unit variance."""
    templates = torch.randn(CLASSES, *shape, generator=_generator(TASK))
    y = _labels(n, seed)
    noise = torch.randn(n, *shape, generator=_generator(seed + 1))
    return (templates[y] + noise) / math.sqrt(2), y


def pixels(n: int, seed: int, shape: tuple[int, ...] = (784,)) -> tuple[torch.Tensor, torch.Tensor]:
    """Templated images in [0, 1], as MNIST's (for network2)."""
    x, y = templated(n, seed, shape)
    return (x * 0.25 + 0.5).clamp(0, 1), y


def class_tokens(n: int, seed: int, classes: int = CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids from a slice of the vocabulary that depends on the class."""
    y = _labels(n, seed, classes)
    width = (VOCAB - 3) // classes
    ids = 3 + y[:, None] * width + torch.randint(0, width, (n, T), generator=_generator(seed + 1))
    return ids, y


def bigram_rows(n: int, seed: int, t: int, low: int = 3, k: int = 16) -> torch.Tensor:
    """Rows that follow one fixed successor table over ``k`` tokens starting at ``low``, from
    distinct first tokens while there are enough (two rows with the same first token are the
    same row: labels moved to another row would still match it)."""
    successor = torch.randperm(k, generator=_generator(TASK)) + low
    ids = torch.empty(n, t, dtype=torch.long)
    starts = torch.cat([torch.randperm(k, generator=_generator(seed)) for _ in range(-(-n // k))])
    ids[:, 0] = low + starts[:n]
    for i in range(1, t):
        ids[:, i] = successor[ids[:, i - 1] - low]
    return ids


def _hf_lm(n: int, seed: int) -> dict[str, torch.Tensor]:
    ids = bigram_rows(n, seed, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _bert(n: int, seed: int) -> dict[str, torch.Tensor]:
    ids, y = class_tokens(n, seed, classes=3)
    mask = torch.ones_like(ids)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * ids, "labels": y}


def _t5(n: int, seed: int) -> dict[str, torch.Tensor]:
    ids, y = class_tokens(n, seed)
    labels = (3 + y)[:, None].repeat(1, 8)  # the class token, 8 times
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _sequences(n: int, seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    lengths = torch.randint(2, 10, (n,), generator=_generator(seed))
    x = torch.randn(n, 9, 4, generator=_generator(seed + 1))
    x[torch.arange(9) >= lengths[:, None]] = 0.0
    return (x, lengths), (x[:, :, 0].sum(1) / lengths).unsqueeze(1)


def _toy_lm(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = bigram_rows(n, seed, 13, low=0)
    return ids[:, :-1], ids[:, 1:]


def _smoothed(n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    ids = bigram_rows(n, seed, 12, low=0)
    labels = torch.cat([ids[:, 1:], torch.full((n, 1), -100)], 1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels


def _images(shape: tuple[int, ...]) -> Callable[[int, int], Any]:
    return lambda n, seed: templated(n, seed, shape)


SIGNAL: dict[str, Callable[[int, int], Any]] = {
    "gpt2": _hf_lm,
    "llama": _hf_lm,
    "bert_classifier": _bert,
    "t5": _t5,
    "torchvision_resnet18": _images((3, 32, 32)),
    "torchvision_mobilenet_v3_small": _images((3, 32, 32)),
    "timm_resnet18": _images((3, 32, 32)),
    "timm_vit_tiny": _images((3, 32, 32)),
    "timm_vit_layerscale": _images((3, 32, 32)),
    "packed_lstm": _sequences,
    "log_softmax_nll_cnn": _images((1, 12, 12)),
    "logits_and_aux_loss": _images((20,)),
    "dropout_batchnorm_cnn": _images((3, 32, 32)),
    "transformer_classifier": class_tokens,
    "label_smoothing_lm": _smoothed,
    # the toy zoo (tests/zoo.py)
    "mlp": _images((20,)),
    "cnn_batchnorm": _images((1, 12, 12)),
    "causal_lm": _toy_lm,
    "nielsen_784_30_10": pixels,
}
# (train, holdout) sizes: the zoo's own batch sizes where they are large enough to learn from,
# and holdouts of a few dozen samples.
SIZES: dict[str, tuple[int, int]] = {
    "gpt2": (4, 16),
    "llama": (4, 16),
    "bert_classifier": (16, 32),
    "t5": (16, 32),
    "torchvision_resnet18": (8, 32),
    "torchvision_mobilenet_v3_small": (8, 32),
    "timm_resnet18": (8, 32),
    "timm_vit_tiny": (8, 32),
    "timm_vit_layerscale": (8, 32),
    "packed_lstm": (32, 64),
    "log_softmax_nll_cnn": (32, 64),
    "logits_and_aux_loss": (32, 64),
    "dropout_batchnorm_cnn": (64, 64),  # heavy dropout: 8 or 16 images show no relation
    "transformer_classifier": (16, 32),
    "label_smoothing_lm": (16, 32),
    "mlp": (32, 64),
    "cnn_batchnorm": (32, 64),
    "causal_lm": (8, 16),
    "nielsen_784_30_10": (32, 64),
}


def batches(name: str) -> tuple[Any, Any]:
    """A (train, holdout) pair of batches with a shared relation, for zoo model ``name``."""
    train, holdout = SIZES[name]
    return SIGNAL[name](train, 10), SIGNAL[name](holdout, 20)
