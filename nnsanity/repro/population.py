"""Train many independent network2 models at once: one batched computation, one model each.

``train_population`` gives every model exactly what ``nnsanity.repro.network2.train_single`` would
(its own init and data order from its seed, the same update), up to float rounding, but runs K
models as stacked tensors, so each SGD step costs a few dozen batched ops instead of K autograd
loops.

How: models are sorted deepest first and stacked; hidden layer j exists for a prefix of the
stack, so each stage works on a contiguous slice and shallower models skip it (no pass-through
stages, no masks). Backprop is written out (delta_L = a - y; delta_l = (W^T delta) * a(1 - a))
and each weight update is one fused ``baddbmm_``: W <- (1 - eta*lmbda/n) W - (eta/m) delta^T a.
The first layer's width is padded (30 to 32) with rows that stay exactly zero, because MKL's
small batched GEMMs are much slower at width 30 than at 32. Per step there is no Python work per
model, and every buffer and view is made once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from nnsanity.repro.network2 import (
    Network2Config,
    TrainingResult,
    check_training_arguments,
    init_parameters,
    order_generator,
)
from nnsanity.repro.parallel import map_processes

_EVAL_CHUNK = 2**22  # elements per (K, chunk, width) activation block when evaluating


def _padded(width: int) -> int:
    """The first layer's stored width. Measured on 1 core (K = 20, m = 10, 784 inputs): forward
    plus update take 337 us at width 30 and 263 us at 32; padding 100 to 104 or 112 is slower."""
    return -(-width // 8) * 8 if width < 64 else width


def grid(sizes: Sequence[Sequence[int]], seeds: Sequence[int], init: str = "default"):
    """Every architecture with every seed: ``[Network2Config(s, seed, init) for s, seed]``."""
    return [Network2Config(tuple(s), seed, init) for s in sizes for seed in seeds]


@dataclass(frozen=True)
class PopulationResult:
    """Per-model, per-epoch results (rows in the order of the configs passed in)."""

    configs: tuple[Network2Config, ...]
    correct: Tensor  # (K, epochs) int64: evaluation images right after each epoch
    n_eval: int
    evaluation_cost: Tensor | None  # (K, epochs) float64, network2's total_cost
    training_cost: Tensor | None  # (K, epochs) float64, when monitor_training_cost
    weights: tuple[tuple[Tensor, ...], ...]  # per model, per layer (n_out, n_in)
    biases: tuple[tuple[Tensor, ...], ...]
    seconds: float  # wall time of the training and evaluation

    @property
    def accuracy(self) -> Tensor:
        return self.correct.double() / max(self.n_eval, 1)

    @property
    def final_accuracy(self) -> Tensor:
        return self.accuracy[:, -1]

    @property
    def best_accuracy(self) -> Tensor:
        return self.accuracy.max(dim=1).values

    @property
    def best_epoch(self) -> Tensor:
        return self.correct.argmax(dim=1)  # 0-based, first epoch reaching the best

    def model(self, k: int) -> TrainingResult:
        """Model ``k``'s run in the single-model format of ``train_single``."""
        return TrainingResult(
            config=self.configs[k],
            correct=self.correct[k],
            n_eval=self.n_eval,
            evaluation_cost=None if self.evaluation_cost is None else self.evaluation_cost[k],
            training_cost=None if self.training_cost is None else self.training_cost[k],
            weights=self.weights[k],
            biases=self.biases[k],
        )


class Population:
    """The stacked parameters of K network2 models, sorted deepest first (row r is model
    ``order[r]``), with their batched forward pass, evaluation and SGD step.

    ``train_population`` is the way to train; this class is public so that benchmarks and
    profilers can time one step or one evaluation without a whole run.
    """

    def __init__(self, configs: Sequence[Network2Config], dtype=torch.float32, device=None):
        self.order = sorted(range(len(configs)), key=lambda k: -configs[k].n_hidden)
        self.depths = [configs[k].n_hidden for k in self.order]  # hidden layers, descending
        first = configs[self.order[0]].sizes
        self.k, self.n_in, self.width, self.n_out = len(configs), first[0], first[1], first[-1]
        self.padded = _padded(self.width)
        # active[j]: how many rows have a hidden layer j+1 (j = 0 is the first hidden layer)
        self.active = [sum(d > j for d in self.depths) for j in range(self.depths[0])]
        kw = {"dtype": dtype, "device": device}
        k, h = self.k, self.width
        self.w_in = torch.zeros(k, self.padded, self.n_in, **kw)
        self.b_in = torch.zeros(k, 1, self.padded, **kw)
        self.w_mid = [torch.empty(c, h, h, **kw) for c in self.active[1:]]
        self.b_mid = [torch.empty(c, 1, h, **kw) for c in self.active[1:]]
        self.w_out = torch.empty(k, self.n_out, h, **kw)
        self.b_out = torch.empty(k, 1, self.n_out, **kw)
        for r, i in enumerate(self.order):
            ws, bs = init_parameters(configs[i], **kw)
            self.w_in[r, :h], self.b_in[r, 0, :h] = ws[0], bs[0]
            for j in range(1, self.depths[r]):
                self.w_mid[j - 1][r], self.b_mid[j - 1][r, 0] = ws[j], bs[j]
            self.w_out[r], self.b_out[r, 0] = ws[-1], bs[-1]
        # index of each row's last hidden activation in a (depth, K, ...) activation buffer
        self.top = torch.tensor([(d - 1) * k + r for r, d in enumerate(self.depths)], device=device)

    def parameters_of(self, r: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Copies of row ``r``'s weights (n_out, n_in) and biases (n_out,), first layer first."""
        h, d = self.width, self.depths[r]
        ws = [self.w_in[r, :h], *(w[r] for w in self.w_mid[: d - 1]), self.w_out[r]]
        bs = [self.b_in[r, 0, :h], *(b[r, 0] for b in self.b_mid[: d - 1]), self.b_out[r, 0]]
        return tuple(w.clone() for w in ws), tuple(b.clone() for b in bs)

    def squared_weights(self) -> Tensor:
        """(K,) sum of every weight squared, per row, for network2's regulariser."""
        sq = self.w_in.square().sum((1, 2)) + self.w_out.square().sum((1, 2))
        for w in self.w_mid:
            sq[: len(w)] += w.square().sum((1, 2))
        return sq.double()

    def logits(self, x: Tensor) -> Tensor:
        """(K, N, n_out) logits of every model on shared inputs x (N, n_in)."""
        k, h, hp = self.k, self.width, self.padded
        z = torch.addmm(self.b_in.view(k * hp), x, self.w_in.view(k * hp, self.n_in).t())
        acts = x.new_empty(len(self.active), k, len(x), h)
        acts[0] = torch.sigmoid(z.view(len(x), k, hp)[:, :, :h]).transpose(0, 1)
        for j, (w, b) in enumerate(zip(self.w_mid, self.b_mid, strict=True), 1):
            c = len(w)
            torch.sigmoid(torch.baddbmm(b, acts[j - 1, :c], w.transpose(1, 2)), out=acts[j, :c])
        top = acts.view(-1, len(x), h).index_select(0, self.top)
        return torch.baddbmm(self.b_out, top, self.w_out.transpose(1, 2))

    def evaluate(self, x: Tensor, y: Tensor, lmbda: float) -> tuple[Tensor, Tensor]:
        """(K,) correct counts and (K,) network2 total_cost on (x, y), in chunks to bound memory;
        rows in stack order."""
        correct = torch.zeros(self.k, dtype=torch.int64, device=x.device)
        cost = torch.zeros(self.k, dtype=torch.float64, device=x.device)
        chunk = max(1, _EVAL_CHUNK // (self.k * self.padded))
        for i in range(0, len(x), chunk):
            z = self.logits(x[i : i + chunk])  # (K, C, n_out)
            yc = y[i : i + chunk]
            correct += (z.argmax(2) == yc).sum(1)
            onehot = torch.nn.functional.one_hot(yc, self.n_out).to(z.dtype).expand_as(z)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(z, onehot, reduction="none")
            cost += bce.sum((1, 2)).double()
        cost = cost.cpu() / len(x) + 0.5 * lmbda / len(x) * self.squared_weights().cpu()
        return correct.cpu(), cost

    def sgd_step(self, m: int, x: Tensor, onehot: Tensor, lr: float, decay: float) -> SgdStep:
        """The update of every model on its own batch of ``m`` rows of ``x``: see SgdStep."""
        return SgdStep(self, m, x, onehot, lr, decay)


class _Forward(NamedTuple):
    """One hidden-to-hidden stage of the forward pass, for the rows that have it."""

    bias: Tensor  # (c, 1, h)
    input: Tensor  # (c, m, h): the previous stage's activations
    weight_t: Tensor  # (c, h, h): W^T
    output: Tensor  # (c, m, h): sigmoid(input W^T + bias), written in place


class _Backward(NamedTuple):
    """The same stage walked backwards: its delta, and its weights updated in place."""

    delta: Tensor  # (c, m, h): dC/dz of this stage's output, becomes the input's
    delta_t: Tensor  # (c, h, m): its transpose, for the weight gradient delta^T a
    tmp: Tensor  # (c, m, h): delta W, before the sigmoid's derivative
    input: Tensor  # (c, m, h): the activations that fed this stage
    weight: Tensor  # (c, h, h)
    bias: Tensor  # (c, 1, h)
    bias_grad: Tensor  # (c, 1, h): sum of delta over the batch


class SgdStep:
    """Buffers, and every view of them, for one SGD step of all models, each on its own batch
    of m images: ``step(idx)`` with idx (K * m,) row indices, model-major in stack order.
    Views are made once: at these sizes making them costs as much as the math."""

    def __init__(self, s: Population, m: int, x: Tensor, onehot: Tensor, lr: float, decay: float):
        k, h, depth = s.k, s.width, len(s.active)
        self.x, self.onehot, self.lr, self.decay = x, onehot, -lr, decay
        new = x.new_empty
        self.xb = new(k * m, s.n_in)  # the gathered batch, model-major
        self.yb = new(k * m, s.n_out)
        self.x3, self.y3 = self.xb.view(k, m, s.n_in), self.yb.view(k, m, s.n_out)
        self.z1 = new(k, m, s.padded)  # first layer, padded width
        self.acts = new(depth, k, m, h)  # sigmoid outputs of every hidden stage
        self.act0 = self.acts[0]
        self.top = self.act0 if depth == 1 else new(k, m, h)  # each model's last hidden
        self.out = new(k, m, s.n_out)
        tmp, delta = new(k, m, h), new(k, m, h)
        self.delta = delta
        self.delta1 = x.new_zeros(k, m, s.padded)  # padded columns stay exactly zero
        self.bias_grads = [new(k, 1, s.padded), *(new(c, 1, h) for c in s.active[1:])]
        self.bias_grads.append(new(k, 1, s.n_out))
        self.s, self.m = s, m
        self.z1_h = self.z1[:, :, :h]
        self.w_in_t = s.w_in.transpose(1, 2)
        self.stages = [
            _Forward(
                bias=b,
                input=self.acts[j - 1, : len(w)],
                weight_t=w.transpose(1, 2),
                output=self.acts[j, : len(w)],
            )
            for j, (w, b) in enumerate(zip(s.w_mid, s.b_mid, strict=True), 1)
        ]
        self.stages_back = [  # last stage first
            _Backward(
                delta=delta[:c],
                delta_t=delta[:c].transpose(1, 2),
                tmp=tmp[:c],
                input=f.input,
                weight=w,
                bias=f.bias,
                bias_grad=g,
            )
            for f, w, c, g in zip(
                self.stages, s.w_mid, s.active[1:], self.bias_grads[1:-1], strict=True
            )
        ][::-1]
        self.tmp, self.acts_flat = tmp, self.acts.view(-1, m, h)
        self.out_t, self.w_out_t = self.out.transpose(1, 2), s.w_out.transpose(1, 2)
        self.delta1_h, self.delta1_t = self.delta1[:, :, :h], self.delta1.transpose(1, 2)

    def __call__(self, idx: Tensor) -> None:
        s, lr, decay, out, top, act0 = self.s, self.lr, self.decay, self.out, self.top, self.act0
        torch.index_select(self.x, 0, idx, out=self.xb)
        torch.index_select(self.onehot, 0, idx, out=self.yb)
        # forward
        torch.baddbmm(s.b_in, self.x3, self.w_in_t, out=self.z1).sigmoid_()
        act0.copy_(self.z1_h)  # elementwise ops on the strided view are slow
        for bias, a, w_t, a_next in self.stages:
            torch.baddbmm(bias, a, w_t, out=a_next).sigmoid_()
        if top is not act0:
            torch.index_select(self.acts_flat, 0, s.top, out=top)
        torch.baddbmm(s.b_out, top, self.w_out_t, out=out).sigmoid_()
        out.sub_(self.y3)  # the output error a - y
        # backward, each layer's delta taken before its weights move
        tmp, delta, g = self.tmp, self.delta, self.bias_grads[-1]
        torch.bmm(out, s.w_out, out=tmp)
        s.w_out.baddbmm_(self.out_t, top, beta=decay, alpha=lr)
        s.b_out.add_(torch.sum(out, 1, keepdim=True, out=g), alpha=lr)
        torch.mul(tmp, top, out=delta).addcmul_(delta, top, value=-1)  # * a(1 - a)
        for d, d_t, t, a, w, b, g in self.stages_back:
            torch.bmm(d, w, out=t)
            w.baddbmm_(d_t, a, beta=decay, alpha=lr)
            b.add_(torch.sum(d, 1, keepdim=True, out=g), alpha=lr)
            torch.mul(t, a, out=d).addcmul_(d, a, value=-1)
        self.delta1_h.copy_(delta)
        s.w_in.baddbmm_(self.delta1_t, self.x3, beta=decay, alpha=lr)
        s.b_in.add_(torch.sum(self.delta1, 1, keepdim=True, out=self.bias_grads[0]), alpha=lr)


def _check_configs(configs: Sequence[Network2Config]) -> None:
    if isinstance(configs, Network2Config) or not isinstance(configs, Sequence) or not configs:
        raise TypeError("configs must be a non-empty sequence of Network2Config")
    if not all(isinstance(c, Network2Config) for c in configs):
        raise TypeError("configs must be a non-empty sequence of Network2Config")
    first = configs[0].sizes
    for c in configs:
        if c.n_hidden < 1:
            raise ValueError(f"every model needs at least one hidden layer, got {c.sizes}")
        if c.sizes[0] != first[0] or c.sizes[-1] != first[-1] or set(c.sizes[1:-1]) != {first[1]}:
            raise ValueError(
                f"all models must share the input and output sizes and one hidden width, "
                f"got {first} and {c.sizes}; train different widths in separate populations"
            )


def train_population(
    configs: Sequence[Network2Config],
    train_x: Tensor,
    train_y: Tensor,
    *,
    epochs: int,
    eta: float,
    lmbda: float = 0.0,
    mini_batch_size: int = 10,
    eval_x: Tensor | None = None,
    eval_y: Tensor | None = None,
    monitor_training_cost: bool = False,
    dtype: torch.dtype = torch.float32,
    device=None,
    progress: Callable[[int, int], None] | None = None,
    processes: int = 1,
) -> PopulationResult:
    """Train each config as network2 would, all at once; ``progress(done, total)`` after each
    epoch counts model-epochs.

    Proves, per model, what ``train_single`` proves (tested equal to float rounding); it does
    not make the models interact. Models may differ in depth and seed and init, but must share
    the input size, output size and hidden width, and eta, lmbda and the mini-batch size.

    ``processes > 1`` (CPU only) splits the models into that many groups of about equal work and
    trains each group in its own forked process on one thread: small batched GEMMs gain little
    from a second thread, but two populations side by side keep both cores busy. A model's
    numbers depend on the population around it only through float rounding (MKL's batched
    GEMMs round a few models differently by batch size: about 1 ulp per step), so the split is
    deterministic but not bit-identical to one process: fix ``processes`` to repeat a run.
    """
    _check_configs(configs)  # all share the input and output sizes
    check_training_arguments(
        configs[0], train_x, train_y, eval_x, eval_y, epochs, mini_batch_size, eta, lmbda, dtype
    )
    if progress is not None and not callable(progress):
        raise TypeError("progress must be callable(done_model_epochs, total_model_epochs)")
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ValueError(f"processes must be an int >= 1, got {processes!r}")
    kwargs = {
        "epochs": epochs,
        "eta": eta,
        "lmbda": lmbda,
        "mini_batch_size": mini_batch_size,
        "eval_x": eval_x,
        "eval_y": eval_y,
        "monitor_training_cost": monitor_training_cost,
        "dtype": dtype,
        "device": device,
    }
    on_cpu = device is None or torch.device(device).type == "cpu"
    if processes > 1 and len(configs) > 1 and on_cpu:
        return _train_in_processes(configs, train_x, train_y, kwargs, progress, processes)
    return _train(configs, train_x, train_y, progress=progress, **kwargs)


def _train(
    configs: Sequence[Network2Config],
    train_x: Tensor,
    train_y: Tensor,
    *,
    epochs: int,
    eta: float,
    lmbda: float,
    mini_batch_size: int,
    eval_x: Tensor | None,
    eval_y: Tensor | None,
    monitor_training_cost: bool,
    dtype: torch.dtype,
    device,
    progress: Callable[[int, int], None] | None,
) -> PopulationResult:
    """The training loop of ``train_population`` in this process, arguments checked."""
    n_out, n, m = configs[0].sizes[-1], len(train_x), mini_batch_size
    start = time.perf_counter()
    stack = Population(configs, dtype, device)
    k, dev = stack.k, stack.w_in.device
    x = train_x.to(dev, dtype).contiguous()
    y = train_y.to(dev)
    onehot = torch.nn.functional.one_hot(y, n_out).to(dtype)
    decay = 1.0 - eta * lmbda / n
    full, rest = divmod(n, m)
    step = stack.sgd_step(m, x, onehot, eta / m, decay)
    last = stack.sgd_step(rest, x, onehot, eta / rest, decay) if rest else None
    orders = [order_generator(configs[i].seed) for i in stack.order]
    correct = torch.zeros(k, epochs, dtype=torch.int64)
    eval_cost = torch.zeros(k, epochs, dtype=torch.float64)
    train_cost = torch.zeros(k, epochs, dtype=torch.float64)
    if eval_x is not None and eval_y is not None:
        ex, ey = eval_x.to(dev, dtype), eval_y.to(dev)
    with torch.no_grad():
        for epoch in range(epochs):
            perms = torch.stack([torch.randperm(n, generator=g) for g in orders]).to(dev)
            batches = perms[:, : full * m].reshape(k, full, m).transpose(0, 1).reshape(full, k * m)
            for idx in batches:
                step(idx)
            if last is not None:
                last(perms[:, full * m :].reshape(-1))
            if eval_x is not None:
                correct[:, epoch], eval_cost[:, epoch] = stack.evaluate(ex, ey, lmbda)
            if monitor_training_cost:
                train_cost[:, epoch] = stack.evaluate(x, y, lmbda)[1]
            if progress is not None:
                progress(k * (epoch + 1), k * epochs)
    # back from depth order to the caller's order
    rows = [stack.order.index(i) for i in range(k)]
    params = [stack.parameters_of(r) for r in rows]
    return PopulationResult(
        configs=tuple(configs),
        correct=correct[rows] if eval_x is not None else correct[rows, :0],
        n_eval=0 if eval_x is None else len(eval_x),
        evaluation_cost=eval_cost[rows] if eval_x is not None else None,
        training_cost=train_cost[rows] if monitor_training_cost else None,
        weights=tuple(p[0] for p in params),
        biases=tuple(p[1] for p in params),
        seconds=time.perf_counter() - start,
    )


def _flops(config: Network2Config) -> int:
    """Multiply-adds of one example's forward pass: the work a model adds to a population."""
    return sum(i * o for i, o in zip(config.sizes[:-1], config.sizes[1:], strict=True))


def split(configs: Sequence[Network2Config], groups: int) -> list[list[int]]:
    """Indices of ``configs`` in ``groups`` non-empty groups of about equal work: the largest
    model first into the lightest group (deterministic, so a run repeats exactly)."""
    order = sorted(range(len(configs)), key=lambda k: (-_flops(configs[k]), k))
    parts: list[list[int]] = [[] for _ in range(min(groups, len(configs)))]
    load = [0] * len(parts)
    for k in order:
        g = min(range(len(parts)), key=lambda i: (load[i], i))
        parts[g].append(k)
        load[g] += _flops(configs[k])
    return [sorted(p) for p in parts]


def _train_in_processes(configs, train_x, train_y, kwargs, progress, processes) -> PopulationResult:
    start = time.perf_counter()
    parts = split(configs, processes)
    total = len(configs) * kwargs["epochs"]

    def train_group(part: list[int], tick) -> PopulationResult:
        done = [0]

        def per_epoch(model_epochs: int, _total: int) -> None:
            tick(model_epochs - done[0])
            done[0] = model_epochs

        group = [configs[k] for k in part]
        return _train(group, train_x, train_y, progress=per_epoch, **kwargs)

    results = map_processes(
        train_group,
        parts,
        groups=[[i] for i in range(len(parts))],
        processes=len(parts),
        progress=None if progress is None else lambda done: progress(min(done, total), total),
    )
    if progress is not None:
        progress(total, total)
    rows: list[tuple[PopulationResult, int]] = [None] * len(configs)  # type: ignore[list-item]
    for part, result in zip(parts, results, strict=True):
        for r, k in enumerate(part):
            rows[k] = (result, r)

    def gather(field: str) -> Tensor | None:
        if getattr(rows[0][0], field) is None:
            return None
        return torch.stack([getattr(res, field)[r] for res, r in rows])

    return PopulationResult(
        configs=tuple(configs),
        correct=torch.stack([res.correct[r] for res, r in rows]),
        n_eval=results[0].n_eval,
        evaluation_cost=gather("evaluation_cost"),
        training_cost=gather("training_cost"),
        weights=tuple(res.weights[r] for res, r in rows),
        biases=tuple(res.biases[r] for res, r in rows),
        seconds=time.perf_counter() - start,
    )
