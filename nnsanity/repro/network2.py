"""Nielsen's network2.py in PyTorch, faithful to the book's code, and its plain reference trainer.

The contract (see the claims file): fully connected layers with a sigmoid on every layer, the
output included; cost = sum over the outputs of binary cross-entropy, averaged over the batch;
default init weights N(0, 1)/sqrt(n_in) and biases N(0, 1) ("large": both N(0, 1)); plain SGD
W <- (1 - eta*lmbda/n) W - (eta/m) sum grad, biases undecayed, n = training-set size; a fresh
shuffle each epoch, consecutive slices of m (the last one may be shorter, and then its step uses
its own size, as network2 does); argmax accuracy on the evaluation data after every epoch.
network2 runs in float64 numpy; float32 is the default here (say so when reporting).

Every model is seeded by its own generators: its init from ``2 * seed`` and its data order from
``2 * seed + 1``. So a model's data order depends on its seed only (the same seed gives the same
order at every depth, a paired comparison), and layers are drawn first to last, each weight then
bias, so a deeper model with the same seed shares its first layer's init with a shallower one.

``train_single`` is the plain one-model-at-a-time loop (``nn.Linear``, autograd, ``torch.optim.SGD``
with weight decay on the weights only): the oracle the batched ``nnsanity.repro.population`` trainer
is tested against. ``bias_gradients`` and ``gradient_descent_speeds`` are N2's and N3's measurements
(``fig/generate_gradient.py``), batched over many inits of one architecture with autograd.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

INITS = ("default", "large")
_FLOATS = (torch.float32, torch.float64)
_MAX_SEED = 2**62  # 2 * seed + 1 must fit a generator's 64-bit seed


@dataclass(frozen=True)
class Network2Config:
    """One network: layer sizes such as ``(784, 30, 10)``, its seed and its init."""

    sizes: tuple[int, ...]
    seed: int = 0
    init: str = "default"

    def __post_init__(self) -> None:
        sizes = tuple(self.sizes) if isinstance(self.sizes, Sequence) else self.sizes
        if not isinstance(sizes, tuple) or not all(_is_int(s) for s in sizes):
            raise TypeError(
                f"sizes must be a sequence of ints such as (784, 30, 10), got {sizes!r}"
            )
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes needs an input and an output layer, all >= 1, got {sizes!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < _MAX_SEED:
            raise ValueError(f"seed must be an int in [0, 2**62), got {self.seed!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        object.__setattr__(self, "sizes", tuple(int(s) for s in sizes))

    @property
    def n_hidden(self) -> int:
        return len(self.sizes) - 2


@dataclass(frozen=True)
class TrainingResult:
    """One model's run: per-epoch evaluation results and the final parameters.

    ``correct[e]`` counts the evaluation images classified right after epoch ``e`` (network2's
    printout); the costs are network2's ``total_cost`` (mean summed BCE plus
    ``0.5 * lmbda / len(data) * sum ||W||^2``), recorded only when asked for.
    """

    config: Network2Config
    correct: Tensor  # (epochs,) int64
    n_eval: int
    evaluation_cost: Tensor | None  # (epochs,) float64
    training_cost: Tensor | None  # (epochs,) float64
    weights: tuple[Tensor, ...]  # (n_out, n_in) per layer
    biases: tuple[Tensor, ...]  # (n_out,) per layer

    @property
    def accuracy(self) -> Tensor:
        return self.correct.double() / max(self.n_eval, 1)

    @property
    def best_epoch(self) -> int:
        return int(self.correct.argmax())  # the first epoch reaching the best count

    def network(self) -> Network2:
        return Network2.from_parameters(self.weights, self.biases)


def init_parameters(
    config: Network2Config, *, dtype: torch.dtype = torch.float32, device=None
) -> tuple[list[Tensor], list[Tensor]]:
    """The model's initial weights (n_out, n_in) and biases (n_out,), drawn in float64 on the CPU
    so every dtype and device starts from the same numbers."""
    g = torch.Generator().manual_seed(2 * config.seed)
    weights, biases = [], []
    for n_in, n_out in zip(config.sizes[:-1], config.sizes[1:], strict=True):
        w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
        if config.init == "default":
            w /= math.sqrt(n_in)
        weights.append(w.to(device=device, dtype=dtype))
        biases.append(torch.randn(n_out, generator=g, dtype=torch.float64).to(device, dtype))
    return weights, biases


def order_generator(seed: int) -> torch.Generator:
    """The generator of a model's data order: ``torch.randperm(n, generator=...)`` per epoch."""
    return torch.Generator().manual_seed(2 * seed + 1)


class Network2(nn.Module):
    """network2's sigmoid network; ``forward`` returns the output layer's pre-activations."""

    def __init__(self, config: Network2Config, *, dtype=torch.float32, device=None) -> None:
        super().__init__()
        self.config = config
        sizes = config.sizes
        # skip_init: nn.Linear's own init would draw from (and move) the global RNG
        device = "cpu" if device is None else device  # skip_init would leave None on "meta"
        self.layers = nn.ModuleList(
            nn.utils.skip_init(nn.Linear, i, o, dtype=dtype, device=device)
            for i, o in itertools.pairwise(sizes)
        )
        weights, biases = init_parameters(config, dtype=dtype, device=device)
        self.load_parameters(weights, biases)

    @classmethod
    def from_parameters(cls, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> Network2:
        sizes = (weights[0].shape[1], *(w.shape[0] for w in weights))
        net = cls(Network2Config(sizes), dtype=weights[0].dtype, device=weights[0].device)
        net.load_parameters(weights, biases)
        return net

    @property
    def linears(self) -> list[nn.Linear]:
        """The layers, typed as what they are."""
        return [layer for layer in self.layers if isinstance(layer, nn.Linear)]

    @torch.no_grad()
    def load_parameters(self, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> None:
        for layer, w, b in zip(self.linears, weights, biases, strict=True):
            layer.weight.copy_(w)
            layer.bias.copy_(b)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = torch.sigmoid(layer(x))
        return self.layers[-1](x)


def network2_cost(z: Tensor, y: Tensor) -> Tensor:
    """network2's cross-entropy cost of logits ``z`` for labels ``y``: summed over outputs, mean
    over the batch."""
    onehot = F.one_hot(y, z.shape[-1]).to(z.dtype)
    return F.binary_cross_entropy_with_logits(z, onehot, reduction="sum") / z.shape[0]


def total_cost(net: Network2, x: Tensor, y: Tensor, lmbda: float) -> float:
    """network2's ``total_cost``, regulariser included (with ``len(data)``, as network2 does)."""
    with torch.no_grad():
        sq = sum(float(layer.weight.double().square().sum()) for layer in net.linears)
        return float(network2_cost(net(x), y)) + 0.5 * lmbda / len(x) * sq


def _check_data(x: Tensor, y: Tensor, n_in: int, n_out: int, name: str) -> None:
    """ValueError/TypeError unless ``x`` is (N, n_in) floats and ``y`` (N,) labels < n_out."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{name} data must be tensors x (N, {n_in}) and y (N,)")
    if x.dim() != 2 or x.shape[1] != n_in or not x.is_floating_point():
        raise ValueError(f"{name} x must be floats of shape (N, {n_in}), got {tuple(x.shape)}")
    if y.shape != (x.shape[0],) or y.dtype != torch.int64:
        raise ValueError(
            f"{name} y must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
        )
    if len(y) and not 0 <= int(y.min()) <= int(y.max()) < n_out:
        raise ValueError(f"{name} labels must lie in [0, {n_out}), got [{y.min()}, {y.max()}]")


def _check_hyper(epochs: int, mini_batch_size: int, eta: float, lmbda: float, n: int) -> None:
    if not _is_int(epochs) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not _is_int(mini_batch_size) or mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be an int >= 1, got {mini_batch_size!r}")
    if not eta >= 0 or not lmbda >= 0:
        raise ValueError(f"eta and lmbda must be >= 0, got eta={eta!r}, lmbda={lmbda!r}")
    if n < 1:
        raise ValueError("the training data is empty")


def check_training_arguments(
    config: Network2Config,
    train_x: Tensor,
    train_y: Tensor,
    eval_x: Tensor | None,
    eval_y: Tensor | None,
    epochs: int,
    mini_batch_size: int,
    eta: float,
    lmbda: float,
    dtype: torch.dtype,
) -> None:
    """What ``train_single`` and ``train_population`` ask of the data (shaped for ``config``'s
    input and output sizes), the hyper-parameters and the dtype."""
    if dtype not in _FLOATS:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    n_in, n_out = config.sizes[0], config.sizes[-1]
    _check_data(train_x, train_y, n_in, n_out, "training")
    if (eval_x is None) != (eval_y is None):
        raise ValueError("pass both eval_x and eval_y, or neither")
    if eval_x is not None and eval_y is not None:
        _check_data(eval_x, eval_y, n_in, n_out, "evaluation")
    _check_hyper(epochs, mini_batch_size, eta, lmbda, len(train_x))


def train_single(
    config: Network2Config,
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
) -> TrainingResult:
    """Train one network2 with the plain PyTorch loop (autograd + ``torch.optim.SGD``).

    The reference for ``nnsanity.repro.population.train_population``: same init, same data order,
    same update, one model at a time. Proves nothing about speed; it is the slow, obvious version.
    """
    if not isinstance(config, Network2Config):
        raise TypeError(f"config must be a Network2Config, got {type(config).__name__}")
    check_training_arguments(
        config, train_x, train_y, eval_x, eval_y, epochs, mini_batch_size, eta, lmbda, dtype
    )
    n_out, n = config.sizes[-1], len(train_x)

    x, y = train_x.to(device, dtype), train_y.to(device)
    onehot = F.one_hot(y, n_out).to(dtype)
    net = Network2(config, dtype=dtype, device=device)
    weights = [layer.weight for layer in net.linears]
    biases = [layer.bias for layer in net.linears]
    optimizer = torch.optim.SGD(
        [{"params": weights, "weight_decay": lmbda / n}, {"params": biases, "weight_decay": 0.0}],
        lr=eta,
    )
    if eval_x is not None and eval_y is not None:
        ex, ey = eval_x.to(x.device, dtype), eval_y.to(x.device)
    order = order_generator(config.seed)
    correct, eval_cost, train_cost = [], [], []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order).to(x.device)
        for start in range(0, n, mini_batch_size):
            idx = perm[start : start + mini_batch_size]
            z = net(x[idx])
            loss = F.binary_cross_entropy_with_logits(z, onehot[idx], reduction="sum") / len(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if eval_x is not None:
            with torch.no_grad():
                correct.append(int((net(ex).argmax(1) == ey).sum()))
            eval_cost.append(total_cost(net, ex, ey, lmbda))
        if monitor_training_cost:
            train_cost.append(total_cost(net, x, y, lmbda))
    return TrainingResult(
        config=config,
        correct=torch.tensor(correct if eval_x is not None else [], dtype=torch.int64),
        n_eval=0 if eval_x is None else len(eval_x),
        evaluation_cost=torch.tensor(eval_cost, dtype=torch.float64)
        if eval_x is not None
        else None,
        training_cost=torch.tensor(train_cost, dtype=torch.float64)
        if monitor_training_cost
        else None,
        weights=tuple(w.detach().clone() for w in weights),
        biases=tuple(b.detach().clone() for b in biases),
    )


def _stacked_logits(weights: Sequence[Tensor], biases: Sequence[Tensor], x: Tensor) -> Tensor:
    """Logits (S, N, n_out) of S same-sized networks (weights (S, n_out, n_in)) on shared x."""
    s, h, n_in = weights[0].shape
    z = torch.addmm(biases[0].reshape(s * h), x, weights[0].reshape(s * h, n_in).t())  # (N, S*h)
    a = torch.sigmoid(z).view(len(x), s, h).transpose(0, 1)  # (S, N, h)
    for w, b in zip(weights[1:-1], biases[1:-1], strict=True):
        a = torch.sigmoid(torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2)))
    return torch.baddbmm(biases[-1].unsqueeze(1), a, weights[-1].transpose(1, 2))


def _stacked_init(
    sizes, seeds, init, dtype, device, weight_scale: float = 1.0
) -> tuple[list[Tensor], list[Tensor]]:
    params = [
        init_parameters(Network2Config(sizes, s, init), dtype=dtype, device=device) for s in seeds
    ]
    return (
        [weight_scale * torch.stack(ws) for ws in zip(*(p[0] for p in params), strict=True)],
        [torch.stack(bs) for bs in zip(*(p[1] for p in params), strict=True)],
    )


def _check_stack(sizes, x, y, seeds) -> Network2Config:
    config = Network2Config(tuple(sizes))
    if config.n_hidden < 1:
        raise ValueError(f"sizes needs at least one hidden layer, got {config.sizes}")
    _check_data(x, y, config.sizes[0], config.sizes[-1], "gradient")
    if len(x) < 1 or len(seeds) < 1 or not all(_is_int(s) for s in seeds):
        raise ValueError("need at least one image and a non-empty sequence of int seeds")
    return config


def _hidden_bias_gradients(weights, biases, x, onehot) -> list[Tensor]:
    """d(mean cost)/db for each hidden layer, (S, width) each; summed over the S models' costs,
    which are independent, so each model gets its own gradient."""
    biases = [b.detach().requires_grad_(True) for b in biases]
    z = _stacked_logits(weights, biases, x)
    cost = F.binary_cross_entropy_with_logits(z, onehot.expand_as(z), reduction="sum") / len(x)
    return list(torch.autograd.grad(cost, biases[:-1]))


def bias_gradients(
    sizes: Sequence[int],
    x: Tensor,
    y: Tensor,
    *,
    seeds: Sequence[int],
    init: str = "default",
    weight_scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> list[Tensor]:
    """N2: for fresh networks (one per seed), each hidden layer's bias gradient of the mean cost
    over the images, i.e. generate_gradient.py's signed average of dC_x/db^l. Returns one
    (len(seeds), width) tensor per hidden layer; take ``.norm(dim=1)`` for the book's numbers.
    ``weight_scale`` multiplies every initial weight (1: the book's init)."""
    _check_stack(sizes, x, y, seeds)
    weights, biases = _stacked_init(tuple(sizes), seeds, init, dtype, device, weight_scale)
    x = x.to(weights[0].device, dtype)
    onehot = F.one_hot(y.to(x.device), sizes[-1]).to(dtype)
    return _hidden_bias_gradients(weights, biases, x, onehot)


def bias_gradient_norms(
    sizes: Sequence[int],
    x: Tensor,
    y: Tensor,
    *,
    seeds: Sequence[int],
    init: str = "default",
    weight_scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> Tensor:
    """N2's numbers: (len(seeds), n_hidden) norms of each hidden layer's mean bias gradient."""
    grads = bias_gradients(
        sizes, x, y, seeds=seeds, init=init, weight_scale=weight_scale, dtype=dtype, device=device
    )
    return torch.stack([g.norm(dim=1) for g in grads], dim=1)


def gradient_descent_speeds(
    sizes: Sequence[int],
    x: Tensor,
    y: Tensor,
    *,
    seeds: Sequence[int],
    epochs: int = 500,
    eta: float = 0.1,
    lmbda: float = 5.0,
    init: str = "default",
    dtype: torch.dtype = torch.float64,
    device=None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """N3: full-batch gradient descent on ``x`` (n = len(x), so the decay is 1 - eta*lmbda/n),
    recording each hidden layer's bias-gradient norm before every step, as generate_gradient.py
    does. Returns (len(seeds), epochs, n_hidden); entry 0 is the untrained network."""
    _check_stack(sizes, x, y, seeds)
    _check_hyper(epochs, 1, eta, lmbda, len(x))
    weights, biases = _stacked_init(tuple(sizes), seeds, init, dtype, device)
    x = x.to(weights[0].device, dtype)
    onehot = F.one_hot(y.to(x.device), sizes[-1]).to(dtype)
    decay = 1.0 - eta * lmbda / len(x)
    norms = torch.empty(len(seeds), epochs, len(sizes) - 2, dtype=torch.float64)
    for epoch in range(epochs):
        weights = [w.detach().requires_grad_(True) for w in weights]
        biases = [b.detach().requires_grad_(True) for b in biases]
        z = _stacked_logits(weights, biases, x)
        cost = F.binary_cross_entropy_with_logits(z, onehot.expand_as(z), reduction="sum") / len(x)
        grads = torch.autograd.grad(cost, weights + biases)
        gw, gb = grads[: len(weights)], grads[len(weights) :]
        norms[:, epoch] = torch.stack([g.norm(dim=1) for g in gb[:-1]], dim=1).double().cpu()
        with torch.no_grad():
            weights = [w * decay - eta * g for w, g in zip(weights, gw, strict=True)]
            biases = [b - eta * g for b, g in zip(biases, gb, strict=True)]
        if progress is not None:
            progress(epoch + 1, epochs)
    return norms


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
