"""pytorch/examples' ``word_language_model``: its ``RNNModel`` (LSTM, time-first ``(T, B)``
batches, log-softmax scored by NLL) and the step of its ``main.py`` (plain SGD at lr 20 with the
gradient norm clipped to 0.25), on a noisy-bigram corpus of any vocabulary size."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class RNNModel(nn.Module):
    def __init__(self, ntoken: int, ninp: int = 200, nhid: int = 200, nlayers: int = 2) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=0.2)
        self.decoder = nn.Linear(nhid, ntoken)
        self.ntoken = ntoken
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)  # the example's init_weights
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.drop(self.encoder(x)))
        return F.log_softmax(self.decoder(self.drop(out)).view(-1, self.ntoken), dim=1)


def lm_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(out, y.reshape(-1))


def word_lm(vocab: int, seed: int) -> RNNModel:
    torch.manual_seed(seed)
    return RNNModel(vocab)


def corpus(vocab: int, seed: int, t: int = 35, b: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T, B)`` inputs and next tokens: each token follows a fixed successor table 80% of the
    time, else a random token."""
    g = torch.Generator().manual_seed(seed)
    successor = torch.randperm(vocab, generator=torch.Generator().manual_seed(99))
    x = torch.randint(0, vocab, (t + 1, b), generator=g)
    for k in range(1, t + 1):
        keep = torch.rand(b, generator=g) < 0.8
        x[k] = torch.where(keep, successor[x[k - 1]], x[k])
    return x[:-1], x[1:]


def sgd_step(lr: float = 20.0, clip: float = 0.25) -> Callable[[nn.Module], Callable]:
    """``main.py``'s step: ``p.data.add_(p.grad, alpha=-lr)`` after ``clip_grad_norm_``."""

    def make(model: nn.Module) -> Callable[[tuple], torch.Tensor]:
        def step(batch: tuple) -> torch.Tensor:
            x, y = batch
            model.zero_grad()
            loss = lm_loss(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
            return loss

        return step

    return make
