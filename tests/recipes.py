"""Small models written the way three public projects write theirs, each with its own step.

- ``GPT``: karpathy/nanoGPT's ``model.py`` convention, ``model(idx, targets) -> (logits, loss)``,
  full logits only when the targets are given; ``gpt_step`` is ``train.py``'s step (AdamW,
  betas (0.9, 0.95), weight decay 0.1, gradient clipping at 1.0).
- ``WordTransformer``: pytorch/examples ``word_language_model``'s ``TransformerModel``:
  time-first ``(T, B)`` token batches, ``nn.TransformerEncoder`` with its default
  ``batch_first=False``, a causal mask, log-probabilities out; ``word_step`` is ``main.py``'s
  (plain SGD written by hand, gradient clipping at 0.25).
- ``WordLSTM``: the same example's ``RNNModel``: ``model(data, hidden) -> (log_probs, hidden)``,
  the hidden state carried from batch to batch by the step and detached before each one
  (``repackage_hidden``).

Tiny sizes, so a sweep over seeds stays fast. The data are sequences with a rule to learn.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

VOCAB, T, B = 24, 12, 8
# The word models' vocabulary: a corpus's words, of which one batch uses a few (the tokens of
# rule_tokens). Their step's lr x clip (20 x 0.25 for the LSTM) bounds an update's norm; the
# example's 33,278-word decoder is large beside it, and so is this one (4096 x 64), where a
# 24-word one would be moved by a third of its norm in one step.
WORDS, WORD_D = 4096, 64


def rule_tokens(seed: int = 0, n: int = B, t: int = T + 1) -> torch.Tensor:
    """(n, t) token rows that count up by a per-row stride, from a random start: the next
    token follows from the last two, a rule a small LM learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    return (start + stride * torch.arange(t)) % VOCAB


# -- nanoGPT -----------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.qkv, self.proj, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (
            z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
            for z in self.qkv(x).split(c, dim=2)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, c))


class GPTBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d), CausalSelfAttention(d, heads)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """nanoGPT's GPT at toy size: tied embeddings, N(0, 0.02) init, the loss inside."""

    def __init__(self, d: int = 32, heads: int = 2, layers: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.wte, self.wpe = nn.Embedding(VOCAB, d), nn.Embedding(T, d)
        self.h = nn.ModuleList(GPTBlock(d, heads) for _ in range(layers))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, VOCAB, bias=False)
        self.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:  # inference: only the last position's logits
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )
        return logits, loss


def gpt_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    data = rule_tokens(seed)
    return data[:, :-1].contiguous(), data[:, 1:].contiguous()


def gpt_step(model: nn.Module, lr: float = 1e-3, zero_grad: bool = True):
    """nanoGPT ``train.py``'s step: AdamW, clip at 1.0, zero_grad(set_to_none=True) after
    (``zero_grad=False``: the bug of never zeroing the gradients)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)

    def step(batch):
        x, y = batch
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if zero_grad:
            opt.zero_grad(set_to_none=True)
        return loss

    return step


# -- word_language_model: the LSTM ---------------------------------------------------------------


class WordLSTM(nn.Module):
    """``RNNModel("LSTM")`` of word_language_model at toy size: time-first ``(T, B)`` tokens in,
    ``(log_probs, hidden)`` out, the log-probabilities flattened to ``(T * B, vocab)`` as the
    example's ``F.log_softmax(decoded, dim=1)``; the hidden state is an argument (zeros from
    ``init_hidden`` at the start of an epoch), so a batch's inputs are ``(data, hidden)``."""

    def __init__(
        self,
        d: int = WORD_D,
        layers: int = 2,
        dropout: float = 0.2,
        vocab: int = WORDS,
        seed: int = 0,
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, d)
        self.rnn = nn.LSTM(d, d, layers, dropout=dropout)
        self.decoder = nn.Linear(d, vocab)
        self.layers, self.d, self.vocab = layers, d, vocab
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def init_hidden(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = next(self.parameters())
        return w.new_zeros(self.layers, b, self.d), w.new_zeros(self.layers, b, self.d)

    def forward(self, data: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]):
        out, hidden = self.rnn(self.drop(self.encoder(data)), hidden)
        decoded = self.decoder(self.drop(out)).view(-1, self.vocab)
        return F.log_softmax(decoded, dim=1), hidden


def repackage_hidden(h):
    """The example's: wrap hidden states in new tensors, to detach them from their history."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def word_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``get_batch``'s ``(data, target)``: data (T, B), target flattened to (T * B,)."""
    source = rule_tokens(seed).t().contiguous()  # (T + 1, B): batchify's layout
    return source[:-1], source[1:].reshape(-1)


def lstm_batch(seed: int = 0, layers: int = 2, d: int = WORD_D):
    """``((data, hidden), target)``: the LSTM's call ``model(data, hidden)`` with the state
    it starts an epoch with (zeros)."""
    data, target = word_batch(seed)
    zeros = torch.zeros(layers, data.shape[1], d)
    return (data, (zeros, zeros.clone())), target


def lstm_step(model: WordLSTM, lr: float = 20.0, clip: float = 0.25, detach: bool = True):
    """word_language_model ``main.py``'s ``train()`` step: the hidden state carried from batch
    to batch and repackaged (detached) before each (``detach=False``: the bug of not doing
    so); NLL loss; clip at 0.25; hand-written SGD at lr 20 (the example's default)."""
    state = {"hidden": None}

    def step(batch):
        (data, _), targets = batch
        if state["hidden"] is None or state["hidden"][0].shape[1] != data.shape[1]:
            state["hidden"] = model.init_hidden(data.shape[1])
        hidden = repackage_hidden(state["hidden"]) if detach else state["hidden"]
        model.zero_grad()
        output, state["hidden"] = model(data, hidden)
        loss = F.nll_loss(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-lr)
        return loss

    return step


class StatefulLSTM(nn.Module):
    """An LSTM LM that keeps its hidden state on the module, carried from call to call: the
    outputs of a batch depend on the batches before it. ``detach=False`` also keeps the
    graph, so the second backward runs into the first call's freed graph."""

    def __init__(self, detach: bool = True, d: int = 32, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder, self.decoder = nn.Embedding(VOCAB, d), nn.Linear(d, VOCAB)
        self.rnn = nn.LSTM(d, d, batch_first=True)
        self.detach, self.hidden = detach, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden
        if hidden is not None and self.detach:
            hidden = tuple(h.detach() for h in hidden)
        if hidden is not None and hidden[0].shape[1] != x.shape[0]:
            hidden = None
        out, self.hidden = self.rnn(self.encoder(x), hidden)
        return self.decoder(out)


def stateless_lstm(seed: int = 0) -> StatefulLSTM:
    """The healthy twin of ``StatefulLSTM``: the same network, its state never kept."""

    class Stateless(StatefulLSTM):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.rnn(self.encoder(x))[0])

    return Stateless(seed=seed)


def lstm_loss(outputs, targets: torch.Tensor) -> torch.Tensor:
    """The example's criterion on the ``(log_probs, hidden)`` outputs."""
    return F.nll_loss(outputs[0], targets)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# -- word_language_model: the Transformer --------------------------------------------------------


class PositionalEncoding(nn.Module):
    """The example's sinusoidal encoding, for (T, B, d) inputs (a buffer, not trained)."""

    def __init__(self, d: int, dropout: float = 0.1, max_len: int = 64) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
        pe = torch.zeros(max_len, 1, d)
        pe[:, 0, 0::2], pe[:, 0, 1::2] = torch.sin(position * div), torch.cos(position * div)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.pe[: x.size(0)])


class WordTransformer(nn.Module):
    """``TransformerModel`` of word_language_model at toy size: (T, B) tokens in, an
    ``nn.TransformerEncoder`` with the default ``batch_first=False`` and a causal mask, (T, B,
    vocab) log-probabilities out; the example's loss flattens them (``nll_loss`` on
    ``output.view(-1, ntokens)``)."""

    def __init__(
        self, d: int = WORD_D, heads: int = 2, layers: int = 2, vocab: int = WORDS, seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.pos_encoder = PositionalEncoding(d, dropout=0.2)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.2)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.input_emb, self.decoder, self.d = nn.Embedding(vocab, d), nn.Linear(d, vocab), d
        nn.init.uniform_(self.input_emb.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, src: torch.Tensor, has_mask: bool = True) -> torch.Tensor:
        h = self.pos_encoder(self.input_emb(src) * math.sqrt(self.d))
        if has_mask:  # the example's flag: without the mask, each position sees the future
            mask = nn.Transformer.generate_square_subsequent_mask(len(src))
            h = self.encoder(h, mask=mask, is_causal=True)
        else:
            h = self.encoder(h)
        return F.log_softmax(self.decoder(h), dim=-1)


def word_loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The example's criterion: NLL on the flattened (T * B, vocab) log-probabilities."""
    return F.nll_loss(output.view(-1, output.shape[-1]), targets)


def transformer_step(model: nn.Module, lr: float = 5.0, clip: float = 0.25):
    """``main.py``'s step for the Transformer: no hidden state; the same hand-written SGD, at
    lr 5 (the example's README trains its Transformer with ``--lr 5``)."""

    def step(batch):
        data, targets = batch
        model.zero_grad()
        loss = word_loss(model(data), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-lr)
        return loss

    return step
