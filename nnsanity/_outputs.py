"""What a model's output means to its loss: its kind, and the losses of reference outputs.

A check that judges a loss needs references that hold for any loss: the loss of an output with
no preference, of random outputs, of a confident right prediction, of the best output that does
not depend on the input, and whether the loss pairs each output with its own target at all. They
are computed by handing the loss other outputs in place of the model's (``Harness``
``.loss_of_logits``), so nothing needs to know which loss function it is.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from nnsanity._diagnosis import CONSISTENT, MEASURED, Cause
from nnsanity._harness import Harness, is_loss_dict
from nnsanity._structures import tensors_in

# "positive": values a loss needs > 0 (a Poisson rate, a scale, a Gamma's parameters), whose
# neutral point is 1 and whose free form is their log: references are exp(z), never z itself.
Kind = Literal["logits", "log-probabilities", "probabilities", "positive"]

# A confident right prediction: logits +PERFECT_MARGIN on the right class and -PERFECT_MARGIN
# elsewhere reach a proper loss's minimum to within e^-100, for softmax and sigmoid outputs alike.
PERFECT_MARGIN = 100.0
# Iterations of L-BFGS for the best input-independent output: the problem is convex for
# cross-entropy, MSE and binary cross-entropy, and converges in a few dozen.
_BASELINE_ITERATIONS = 50
_FLOOR_ITERATIONS = 100
_FINITE = 30.0
# Outputs optimised directly are capped in size (a batch of an LM with a 50k vocabulary has tens
# of millions of logits): above it the references are not computed and the checks fall back.
_MAX_FREE = 2**20
_HISTORY = 10  # L-BFGS memory, in copies of the optimised output
_PROBE_SEED = 0  # the synthetic outputs of the pairing probe: fixed, so the verdict is too


def class_dim(logits: torch.Tensor, targets: Any) -> int | None:
    """The class dimension of ``logits`` for integer class ``targets`` (F.cross_entropy's
    (N, C) or (N, C, d1, ...), or (..., C) against (...), or (..., C) against the flattened
    targets a loss that flattens the outputs compares with, word_language_model's (T, B, C)
    against (T * B,)), else None."""
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or logits.dim() < 2:
        return None
    if logits.shape[:-1] == targets.shape:
        return logits.dim() - 1
    if logits.shape[:1] + logits.shape[2:] == targets.shape:
        return 1
    if targets.dim() == 1 and logits.shape[:-1].numel() == targets.numel():
        return logits.dim() - 1
    return None


def kind_of(logits: torch.Tensor, dim: int | None, targets: Any = None) -> Kind:
    """Probabilities sum to 1 in [0, 1] along the class dim; log-probabilities have a
    logsumexp of 0 there. Without a class dim (targets of the outputs' own shape, as for
    BCEWithLogitsLoss or MSE), outputs all in [0, 1] for targets in [0, 1] are probabilities
    (a sigmoid's). Anything else counts as logits (or plain values)."""
    z = logits.detach().double()
    tol = 1e-4  # float32 (and float16) rounding of a softmax, not a different kind
    if dim is None:
        return _kind_without_class_dim(z, targets, tol)
    if logits.shape[dim] < 2:
        return "logits"
    if bool(((z >= 0) & (z <= 1)).all()) and bool(((z.sum(dim) - 1).abs() <= tol).all()):
        return "probabilities"
    if _log_probabilities(z, dim, tol):
        return "log-probabilities"
    return "logits"


def _kind_without_class_dim(z: torch.Tensor, targets: Any, tol: float) -> Kind:
    same = isinstance(targets, torch.Tensor) and targets.shape == z.shape
    in_unit = bool(((z >= 0) & (z <= 1)).all())
    if same and targets.is_floating_point() and in_unit:
        t = targets.detach().double()
        return "probabilities" if bool(((t >= 0) & (t <= 1)).all()) else "logits"
    # A log_softmax over the last dim says what it is whatever the targets' shape: only
    # log-probabilities have a logsumexp of 0 over a dim of >= 2 entries, all <= 0.
    last = z.dim() - 1
    if z.dim() and z.shape[last] >= 2 and _log_probabilities(z, last, tol):
        return "log-probabilities"
    return "logits"


def _log_probabilities(z: torch.Tensor, dim: int, tol: float) -> bool:
    return bool((z <= tol).all()) and bool((z.logsumexp(dim).abs() <= tol).all())


def as_kind(z: torch.Tensor, kind: Kind, dim: int | None) -> torch.Tensor:
    """Logits ``z`` expressed the way the model's output is: log_softmax or softmax of them."""
    if kind == "positive":
        return z.exp()
    if kind == "log-probabilities":
        return z.log_softmax(dim if dim is not None else -1)
    if kind == "probabilities":
        return z.sigmoid() if dim is None else z.softmax(dim)
    return z


def perfect_logits(logits: torch.Tensor, targets: torch.Tensor, dim: int) -> torch.Tensor:
    """±PERFECT_MARGIN logits for each target's class (ignored targets, such as -100, get 0)."""
    c = logits.shape[dim]
    expected = logits.shape[:dim] + logits.shape[dim + 1 :]
    if targets.shape != expected:  # flattened targets, for a loss that flattens the outputs
        targets = targets.reshape(expected)
    valid = (targets >= 0) & (targets < c)
    onehot = torch.nn.functional.one_hot(targets.clamp(0, c - 1), c).to(logits.dtype)
    signs = (2 * onehot - 1) * valid.unsqueeze(-1).to(logits.dtype)
    return PERFECT_MARGIN * signs.movedim(-1, dim)


class Outputs:
    """The model's outputs on the batch, read once, and losses of other outputs in their place."""

    def __init__(self, h: Harness, outputs: Any) -> None:
        self.h, self.outputs = h, outputs
        self.logits = h.logits(outputs).detach()
        # A model that computes its own loss from a label mapping may shift the labels inside;
        # targets passed as a tensor (the nanoGPT convention) line up with the logits.
        targets = h.targets if isinstance(h.targets, torch.Tensor) else None
        self.dim = class_dim(self.logits, targets)
        self.kind = kind_of(self.logits, self.dim, targets)
        if self.kind == "logits" and self.logits.is_floating_point() and self._needs_positive():
            self.kind = "positive"

    def _needs_positive(self) -> bool:
        """Outputs all > 0 for a loss that is not finite at 0 or at -1 (a rate or scale: the
        log of a negative value, or a distribution that rejects it) but is at 1: zero-centred
        references (zeros, unit noise) are then meaningless, and its outputs are read in the
        log domain."""
        if self.logits.numel() == 0 or not bool((self.logits > 0).all()):
            return False
        at = [self.loss_at(v * torch.ones_like(self.logits)) for v in (0.0, -1.0, 1.0)]
        finite = [v is not None and math.isfinite(v) for v in at]
        return finite[2] and not (finite[0] and finite[1])

    def loss_at(self, z: torch.Tensor) -> float | None:
        """The loss had the model output logits ``z`` (in its own kind); None if it cannot be
        arranged or the loss rejects it."""
        try:
            value = self.h.loss_of_logits(self.outputs, as_kind(z, self.kind, self.dim))
        except ValueError:  # e.g. a loss that insists on probabilities in [0, 1]
            return None
        return None if value is None else float(value)

    def perfect_loss(self) -> float | None:
        """The loss of a right prediction: confident logits for class-index targets, or the
        targets themselves for probability outputs of the targets' shape."""
        if self.h.self_loss:
            return None
        if self.dim is not None:
            value = self.loss_at(perfect_logits(self.logits, self.h.targets, self.dim))
        elif self.kind == "probabilities":
            try:
                loss = self.h.loss_of_logits(self.outputs, self.h.targets.to(self.logits.dtype))
            except ValueError:
                return None
            value = None if loss is None else float(loss)
        else:
            return None
        return value if value is not None and math.isfinite(value) else None

    def floor(self) -> float | None:
        """The lowest loss free outputs reach, when reached at finite outputs (label smoothing,
        a regulariser in the loss); None when the loss keeps falling as the outputs grow (its
        infimum is approached, not reached) or it cannot be computed."""
        if self.h.self_loss or self.logits.numel() > _MAX_FREE:
            return None
        z = torch.zeros(self.logits.shape, dtype=torch.float64, device=self.logits.device)
        z.requires_grad_(True)
        opt = torch.optim.LBFGS(
            [z], max_iter=_FLOOR_ITERATIONS, history_size=_HISTORY, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = self.h.loss_of_logits(
                self.outputs, as_kind(z.to(self.logits.dtype), self.kind, self.dim)
            )
            assert loss is not None
            loss.backward()
            return loss

        try:
            with torch.enable_grad():
                opt.step(closure)
                final = float(closure().detach())
        except (ValueError, RuntimeError, AssertionError):
            return None
        # A finite optimum stays near the origin: smoothing 0.1 over 40 classes puts it at
        # logits of ln(0.9025 / 0.0025) = 5.9; an infimum at infinity runs past _FINITE.
        if not math.isfinite(final) or float(z.detach().abs().max()) > _FINITE:
            return None
        return final

    def baseline_loss(self) -> float | None:
        """The lowest loss of an output that is the same for every sample of the batch (it may
        vary along the other dimensions, as position): what no model that ignores its inputs
        can beat. Found by L-BFGS on that shared output; None where it cannot be computed."""
        if self.logits[0].numel() > _MAX_FREE:
            return None
        z0 = torch.zeros(self.logits.shape[1:], dtype=torch.float64, device=self.logits.device)
        if self.h.self_loss:  # each evaluation is a forward pass of the model: a few only
            return self._baseline_by_search(z0)
        shared = z0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [shared], max_iter=_BASELINE_ITERATIONS, history_size=_HISTORY,
            line_search_fn="strong_wolfe",
        )  # fmt: skip

        def closure() -> torch.Tensor:
            opt.zero_grad()
            z = shared.to(self.logits.dtype).expand_as(self.logits)
            loss = self.h.loss_of_logits(self.outputs, as_kind(z, self.kind, self.dim))
            assert loss is not None
            loss.backward()
            return loss

        try:
            with torch.enable_grad():
                opt.step(closure)
                final = float(closure().detach())
        except (ValueError, RuntimeError, AssertionError):
            return None
        return final if math.isfinite(final) else None

    def _baseline_by_search(self, z0: torch.Tensor) -> float | None:
        """For a model that computes its own loss: the better of the uniform output and the
        log-frequencies of the batch's labels (two forward passes; the model may shift its
        labels, as a causal LM does, so the frequencies are pooled over positions)."""
        candidates = [z0.to(self.logits.dtype)]
        labels = self.h.targets
        if isinstance(labels, dict):
            labels = labels.get("labels")
        c = self.logits.shape[-1]
        if isinstance(labels, torch.Tensor) and not labels.is_floating_point() and c >= 2:
            valid = labels[(labels >= 0) & (labels < c)]
            freq = torch.bincount(valid.flatten(), minlength=c).to(torch.float64) + 1e-3
            log_freq = (freq / freq.sum()).log().to(self.logits.dtype)
            candidates.append(log_freq.expand(self.logits.shape[1:]))
        values = [self.loss_at(z.expand_as(self.logits)) for z in candidates]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        return min(finite) if finite else None

    def unpaired(self) -> str | None:
        """How the loss fails to pair each output with its own target, if it does: shuffling
        the outputs across the batch leaves it unchanged (a shape broadcast such as (N, 1)
        against (N,) in MSE compares every output with every target).

        The outputs probed are synthetic (seeded standard-normal logits of the model's output
        shape and dtype, in its kind), not the model's own: at init a model may give every
        sample the same output to 1e-5 (LayerScale ViTs, timm ``init_values=1e-5``), and then
        no shuffle of its outputs can change the loss, however the loss pairs them."""
        targets = self.h.targets
        if self.h.self_loss or not isinstance(targets, torch.Tensor) or targets.dim() == 0:
            return None
        n = targets.shape[0]
        shift = torch.roll(torch.arange(n, device=targets.device), 1)
        if n < 2 or torch.equal(targets[shift], targets) or self.logits.shape[:1] != (n,):
            return None  # shuffling changes nothing on one side: the test says nothing
        if not self._same_loss_when_shuffled(shift):
            return None
        shapes = f"outputs {tuple(self.logits.shape)} and targets {tuple(targets.shape)}"
        try:
            joint = tuple(torch.broadcast_shapes(self.logits.shape, targets.shape))
        except RuntimeError:
            joint = None
        if joint is not None and joint != tuple(self.logits.shape):
            return f"{shapes} broadcast to {joint} in the loss"
        return f"{shapes}: the loss is the same whichever target each output gets"

    def _same_loss_when_shuffled(self, shift: torch.Tensor) -> bool:
        """Whether the loss of synthetic outputs stays the same when they are shuffled across
        the batch by ``shift`` (False where it cannot be computed: the test says nothing)."""
        gen = torch.Generator().manual_seed(_PROBE_SEED)  # the global RNG stays as it was
        z = torch.randn(self.logits.shape, generator=gen, dtype=torch.float64)
        z = z.to(device=self.logits.device, dtype=self.logits.dtype)
        try:
            a, b = self.loss_at(z), self.loss_at(z[shift.to(z.device)])
        except (TypeError, RuntimeError):
            return False
        if a is None or b is None or not math.isfinite(a):
            return False
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def read_outputs(h: Harness, outputs: Any) -> Outputs | None:
    """``Outputs(h, outputs)``, or None where the outputs are a dict of losses alone (a
    torchvision detector in train mode): no output to hand the loss in their place, so the
    references are not computed and the checks fall back to what they do without them."""
    return None if h.output is None and is_loss_dict(outputs) else Outputs(h, outputs)


def unpaired_causes(how: str | None) -> list[Cause]:
    """What every loss-based check says when the loss does not pair outputs with targets."""
    return [
        Cause(
            id="shape_broadcast",
            summary="a shape broadcast in the loss: predictions (N, 1) against targets (N,) in "
            "MSELoss compare every output with every target",
            remedy="squeeze the outputs (out.squeeze(-1)) or reshape the targets to (N, 1)",
            evidence=(how,) if how and "broadcast" in how else (),
            support=MEASURED if how and "broadcast" in how else CONSISTENT,
        ),
        Cause(
            id="loss_reduces_targets",
            summary="the loss reduces the targets before comparing (a mean or sum over the batch)",
            remedy="compare each output with its own target",
        ),
    ]


def conflicting_labels(h: Harness) -> int | None:
    """How many samples of the batch have exactly the inputs of another sample and a different
    target (label noise that no model can fit); None where the targets have no batch dim."""
    b = h.batch_size
    targets = [t for t in tensors_in(h.targets) if t.dim() and t.shape[0] == b]
    data = [t for _, t in h.data_leaves() if t.dim() and t.shape[0] == b]
    if not targets or not data:
        return None
    groups: dict[bytes, list[int]] = {}
    for i in range(b):
        key = b"".join(t[i].detach().cpu().contiguous().numpy().tobytes() for t in data)
        groups.setdefault(key, []).append(i)
    conflicting = 0
    for members in groups.values():
        if len(members) > 1:
            first = members[0]
            same = [all(torch.equal(t[first], t[j]) for t in targets) for j in members[1:]]
            if not all(same):
                conflicting += len(members)
    return conflicting
