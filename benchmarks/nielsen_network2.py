"""Nielsen's network2.py algorithm in numpy, written from the book's description: per-example
backprop with column vectors, float64, the gradients of a mini-batch summed example by example.

Not the book's file: the same algorithm (ch. 2's four backprop equations, ch. 3's cross-entropy
output error a - y and L2 update), written independently so ``bench_population.py`` can time the
engine against the way the book trains. Initial parameters and data orders come from
``nnsanity.repro.network2`` so that both start from the same numbers and see the same batches:
then the trained parameters must agree to float64 rounding, which the benchmark checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class Network2:
    """weights[l]: (n_out, n_in); biases[l]: (n_out, 1); sigmoid on every layer."""

    def __init__(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]) -> None:
        self.weights = [np.array(w, dtype=np.float64) for w in weights]
        self.biases = [np.array(b, dtype=np.float64).reshape(-1, 1) for b in biases]

    def backprop(self, x: np.ndarray, y: np.ndarray) -> tuple[list, list]:
        """dC_x/db and dC_x/dW of one example: x (784, 1), y one-hot (10, 1)."""
        activations, zs = [x], []
        for w, b in zip(self.weights, self.biases):
            zs.append(w @ activations[-1] + b)
            activations.append(sigmoid(zs[-1]))
        delta = activations[-1] - y  # cross-entropy with sigmoid outputs: no sigma' term
        grad_b, grad_w = [delta], [delta @ activations[-2].T]
        for layer in range(2, len(self.weights) + 1):
            a = activations[-layer]
            delta = (self.weights[-layer + 1].T @ delta) * a * (1 - a)
            grad_b.insert(0, delta)
            grad_w.insert(0, delta @ activations[-layer - 1].T)
        return grad_b, grad_w

    def update(self, xs: np.ndarray, ys: np.ndarray, eta: float, lmbda: float, n: int) -> None:
        """One mini-batch step: xs (m, 784), ys (m, 10); L2 shrinks the weights, not biases."""
        sum_b = [np.zeros_like(b) for b in self.biases]
        sum_w = [np.zeros_like(w) for w in self.weights]
        for x, y in zip(xs, ys):
            gb, gw = self.backprop(x.reshape(-1, 1), y.reshape(-1, 1))
            sum_b = [s + g for s, g in zip(sum_b, gb)]
            sum_w = [s + g for s, g in zip(sum_w, gw)]
        m = len(xs)
        self.weights = [
            (1 - eta * lmbda / n) * w - (eta / m) * g for w, g in zip(self.weights, sum_w)
        ]
        self.biases = [b - (eta / m) * g for b, g in zip(self.biases, sum_b)]

    def sgd_epoch(
        self,
        x: np.ndarray,
        y: np.ndarray,
        order: np.ndarray,
        *,
        mini_batch_size: int,
        eta: float,
        lmbda: float,
    ) -> None:
        """One epoch over x (n, 784), labels y (n,), in ``order``, slices of mini_batch_size."""
        onehot = np.eye(self.weights[-1].shape[0])[y]
        for start in range(0, len(x), mini_batch_size):
            idx = order[start : start + mini_batch_size]
            self.update(x[idx], onehot[idx], eta, lmbda, len(x))

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> int:
        """Correctly classified rows of x (n, 784), all at once (the forward pass only)."""
        a = x.T
        for w, b in zip(self.weights, self.biases):
            a = sigmoid(w @ a + b)
        return int((a.argmax(0) == y).sum())
