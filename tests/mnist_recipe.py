"""Public projects' own recipes, rebuilt for the checks' calibration on real optimizers.

- ``MnistNet``: pytorch/examples' ``mnist/main.py`` CNN (conv32-conv64-maxpool-dropout-fc128-
  dropout-fc10, log-softmax scored by ``F.nll_loss``), with ``digits(n, seed)``: MNIST-like
  28x28 digits (each class a fixed smooth stroke template, drawn at a random shift of up to 3
  pixels with pixel noise, standardised with MNIST's mean and std as the example does), learnable
  by that CNN and not by a lookup of pixels.
- ``step_factory(kind)``: the step of ``main.py`` (Adadelta at lr 1.0; its ``StepLR`` steps once
  an epoch, so never within a check) and the optimizers people train such models with: Adagrad,
  SGD with Nesterov momentum, AdamW, each at its usual learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

TASK = 4321  # one set of templates for every batch: a relation shared by train and holdout
CLASSES = 10
SIDE = 28
SHIFT = 3


class MnistNet(nn.Module):
    """pytorch/examples' mnist ``Net``, unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.relu(self.fc1(torch.flatten(self.dropout1(x), 1)))
        return F.log_softmax(self.fc2(self.dropout2(x)), dim=1)


def mnist_net(seed: int) -> MnistNet:
    torch.manual_seed(seed)
    return MnistNet()


def _templates() -> torch.Tensor:
    """One smooth stroke pattern per class: a blurred random walk of ink on a 28x28 canvas."""
    g = torch.Generator().manual_seed(TASK)
    canvas = torch.zeros(CLASSES, 1, SIDE, SIDE)
    for c in range(CLASSES):
        r, q = 14.0, 14.0
        for _ in range(60):
            r = min(max(r + float(torch.randn((), generator=g)) * 1.5, 6), 21)
            q = min(max(q + float(torch.randn((), generator=g)) * 1.5, 6), 21)
            canvas[c, 0, int(r), int(q)] = 1.0
    blur = torch.ones(1, 1, 3, 3) / 9
    return F.conv2d(canvas, blur, padding=1).clamp(0, 1) * 3 / 1.5


def digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` digits ``(n, 1, 28, 28)`` standardised as the example does, with labels ``(n,)``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    shifts = torch.randint(-SHIFT, SHIFT + 1, (n, 2), generator=g)
    base = _templates()[y]
    x = torch.stack([torch.roll(b, (int(s[0]), int(s[1])), (1, 2)) for b, s in zip(base, shifts)])
    x = (x + 0.1 * torch.rand(x.shape, generator=g)).clamp(0, 1)
    return (x - 0.1307) / 0.3081, y


OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "adadelta": lambda m: torch.optim.Adadelta(m.parameters(), lr=1.0),  # main.py's own
    "adagrad": lambda m: torch.optim.Adagrad(m.parameters(), lr=1e-3),
    "sgd_momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01),
}


def step_factory(kind: str) -> Callable[[nn.Module], Callable[[tuple], torch.Tensor]]:
    """``(model) -> step(batch) -> loss`` with a fresh optimizer of ``kind`` for each model."""

    def make(model: nn.Module) -> Callable[[tuple], torch.Tensor]:
        opt = OPTIMIZERS[kind](model)

        def step(batch: tuple) -> torch.Tensor:
            x, y = batch
            opt.zero_grad()
            loss = F.nll_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss

        return step

    return make


class PositionalEncoding(nn.Module):
    """The sinusoidal table of "Attention is all you need" added to a ``(B, T, D)`` input;
    ``bug="first_row"`` adds its first row to every position (``pe[:, :1]``), the indexing slip
    that leaves a Transformer blind to order."""

    def __init__(self, d: int, max_len: int = 64, bug: str | None = None) -> None:
        super().__init__()
        pos = torch.arange(max_len)[:, None]
        div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        pe = torch.zeros(1, max_len, d)
        pe[0, :, 0::2], pe[0, :, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe)
        self.bug = bug

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.pe[:, :1] if self.bug == "first_row" else self.pe[:, : x.size(1)])


ORDER_VOCAB, ORDER_T, ORDER_D = 32, 12, 32


class OrderTransformer(nn.Module):
    """A Transformer encoder classifier of token sequences (mean-pooled), its positions from
    ``PositionalEncoding``."""

    def __init__(self, bug: str | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(ORDER_VOCAB, ORDER_D)
        self.pos_encoding = PositionalEncoding(ORDER_D, bug=bug)
        layer = nn.TransformerEncoderLayer(ORDER_D, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(ORDER_D, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.pos_encoding(self.embed(ids))).mean(1))


def order_transformer(seed: int, bug: str | None = None) -> OrderTransformer:
    torch.manual_seed(seed)
    return OrderTransformer(bug)


def ascending_or_descending(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rows of 12 distinct tokens ``(n, 12)``, sorted ascending (label 0) or descending
    (1): the same tokens either way, so only their order tells the label."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(ORDER_VOCAB, generator=g)[:ORDER_T].sort().values for _ in range(n)]
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.stack(rows)
    return torch.where(y[:, None].bool(), x.flip(1), x), y
