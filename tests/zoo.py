"""Small healthy models and batches every check must pass on; planted bugs live with their tests.

`user_step` is the one exception: a user's training step, healthy unless a classic bug is asked for.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

N_CLASSES = 10


def classification_batch(n: int = 16, shape: tuple[int, ...] = (20,), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    return x, y


def image_batch(n: int = 16, seed: int = 0):
    return classification_batch(n, (1, 12, 12), seed)


def mnist_like_batch(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 784, generator=g)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    return x, y


def token_batch(n: int = 4, t: int = 12, vocab: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, t + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def mlp(seed: int = 0, d_in: int = 20, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, N_CLASSES),
    )


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x6x6
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 16x3x3
        nn.Flatten(),
        nn.Linear(16 * 3 * 3, N_CLASSES),
    )


class NielsenNet(nn.Module):
    """network2.py's [784, 30, 10]: sigmoid everywhere, weights N(0, 1/n_in), biases N(0, 1).

    Returns the output pre-activations, so the cost is summed binary cross-entropy with logits.
    """

    def __init__(self, sizes=(784, 30, 10), seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList()
        for n_in, n_out in itertools.pairwise(sizes):
            layer = nn.Linear(n_in, n_out)
            with torch.no_grad():
                layer.weight.copy_(torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in))
                layer.bias.copy_(torch.randn(n_out, generator=g))
            self.layers.append(layer)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.sigmoid(layer(x))
        return self.layers[-1](x)


def nielsen_loss(z, y):
    """network2's cross-entropy cost: summed over the 10 outputs, averaged over the batch."""
    onehot = F.one_hot(y, N_CLASSES).to(z.dtype)
    return F.binary_cross_entropy_with_logits(z, onehot, reduction="sum") / z.shape[0]


class TinyCausalLM(nn.Module):
    """A one-block causal transformer language model over a small vocabulary."""

    def __init__(
        self, vocab: int = 16, d: int = 32, heads: int = 2, max_len: int = 64, seed: int = 0
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.block = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
        h = self.block(h, src_mask=mask, is_causal=True)
        return self.head(self.ln(h))  # (B, T, vocab)


def lm_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


HEALTHY = {
    "mlp": (mlp, classification_batch, F.cross_entropy),
    "cnn_batchnorm": (cnn, image_batch, F.cross_entropy),
    "causal_lm": (TinyCausalLM, token_batch, lm_loss),
    "nielsen_784_30_10": (NielsenNet, mnist_like_batch, nielsen_loss),
}


def healthy(name: str, seed: int = 0):
    """A fresh ``(model, batch, loss_fn)`` of the zoo model ``name``."""
    model_factory, batch_factory, loss_fn = HEALTHY[name]
    return model_factory(seed=seed), batch_factory(), loss_fn


def user_step(model: nn.Module, bug: str | None = None, loss_fn=F.cross_entropy):
    """A user's training step (Adam 3e-4), optionally with one classic bug planted in it:
    ``"no_zero_grad"``, ``"flipped_sign"`` or ``"no_optimizer_step"``."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step(batch):
        x, y = batch
        if bug != "no_zero_grad":
            opt.zero_grad()
        loss = loss_fn(model(x), y)
        (-loss if bug == "flipped_sign" else loss).backward()
        if bug != "no_optimizer_step":
            opt.step()
        return loss

    return step


class ResidualMLP(nn.Module):
    """Pre-norm residual blocks whose two projections, ``fc1`` and ``fc2``, have the same shape
    (FFN width = model width); ``fc2`` starts at 1/100 of its default scale, as residual
    branches often do (GPT-2 scales its output projections down, LayerScale to 1e-5)."""

    def __init__(self, blocks, d=32):
        super().__init__()
        self.inp = nn.Linear(20, d)
        self.blocks = nn.ModuleList(nn.ModuleDict() for _ in range(blocks))
        for block in self.blocks:
            block["norm"], block["fc1"], block["fc2"] = (
                nn.LayerNorm(d),
                nn.Linear(d, d),
                nn.Linear(d, d),
            )
            with torch.no_grad():
                block["fc2"].weight.mul_(0.01)
                block["fc2"].bias.zero_()
        self.head = nn.Linear(d, N_CLASSES)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b["fc2"](torch.relu(b["fc1"](b["norm"](h))))
        return self.head(h)
