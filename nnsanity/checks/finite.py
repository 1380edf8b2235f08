"""No NaN or Inf anywhere in one training step: parameters, outputs, loss and gradients.

A NaN spreads to everything downstream of it, so the useful answer is where it appeared first:
the check walks the step in the order values are computed and names the first offender.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from nnsanity._arguments import LossFn
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail, names
from nnsanity._result import CheckResult
from nnsanity._state import autograd
from nnsanity._structures import tensors_in

Stage = Literal["parameter", "buffer", "input", "output", "loss", "gradient"]


@dataclass(frozen=True, kw_only=True)
class FiniteResult(CheckResult):
    """Where the first NaN/Inf appeared (``stage`` is None when everything is finite)."""

    stage: Stage | None
    name: str | None  # parameter/buffer name, or the module whose output (gradient) it is
    count: int  # NaN/Inf values in that tensor
    numel: int
    loss: float  # NaN when the loss could not be computed finitely
    nonfinite_grads: tuple[str, ...] = ()  # every parameter with a NaN/Inf gradient
    after: str | None = None  # the last module whose output was finite, for input/output

    @property
    def passed(self) -> bool:
        return self.stage is None


def _bad(tensors: list[torch.Tensor]) -> tuple[int, int]:
    """(non-finite values, values) over the floating-point tensors."""
    floats = [t.detach() for t in tensors if t.is_floating_point() or t.is_complex()]
    return sum(int((~torch.isfinite(t)).sum()) for t in floats), sum(t.numel() for t in floats)


def _label(name: str, m: torch.nn.Module) -> str:
    return f"'{name}' ({type(m).__name__})" if name else f"{type(m).__name__} (the model)"


class _Watch:
    """Forward hooks that record the first module whose input or output is not finite, and
    gradient hooks that record the first module output whose gradient is not."""

    def __init__(self) -> None:
        self.first_bad: tuple[Stage, str, int, int] | None = None  # in forward's order
        self.last_good: str | None = None  # the latest module whose output was finite
        self.first_grad: tuple[str, int, int] | None = None  # in backward's order

    def on_input(self, label: str) -> Any:
        def hook(_: torch.nn.Module, args: Any) -> None:
            count, numel = _bad(tensors_in(args))
            if count and self.first_bad is None:  # made by a functional op in the parent
                self.first_bad = ("input", label, count, numel)

        return hook

    def on_output(self, label: str) -> Any:
        def hook(_: torch.nn.Module, args: Any, output: Any) -> None:
            tensors = tensors_in(output)
            count, numel = _bad(tensors)
            if count and self.first_bad is None:
                self.first_bad = ("output", label, count, numel)
            elif self.first_bad is None:
                self.last_good = label
            for t in tensors:
                if t.requires_grad:
                    t.register_hook(self.on_grad(label))

        return hook

    def on_grad(self, label: str) -> Any:
        def hook(grad: torch.Tensor) -> None:
            count, numel = _bad([grad])
            if count and self.first_grad is None:
                self.first_grad = (label, count, numel)

        return hook

    @contextmanager
    def attached(self, model: torch.nn.Module) -> Iterator[None]:
        handles = []
        for n, m in model.named_modules():
            handles.append(m.register_forward_pre_hook(self.on_input(_label(n, m))))
            handles.append(m.register_forward_hook(self.on_output(_label(n, m))))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def measure_finite(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    unpack: bool | None = None,
    seed: int = 0,
) -> FiniteResult:
    """One forward and backward in training mode, stopping at the first non-finite stage."""
    h = Harness(model, batch, loss_fn, seed=seed, unpack=unpack)

    def found(**fields: Any) -> FiniteResult:
        return FiniteResult(seed=h.seed, **fields)

    with h.isolated():
        for stage, named in (
            ("parameter", h.model.named_parameters()),
            ("buffer", h.model.named_buffers()),
        ):
            for name, t in named:
                count, numel = _bad([t])
                if count:
                    return found(
                        stage=stage, name=name, count=count, numel=numel, loss=float("nan")
                    )
        watch = _Watch()
        with autograd(), watch.attached(h.model):  # even inside no_grad() or inference_mode()
            for p in h.model.parameters():
                p.grad = None
            outputs = h.forward()
            if watch.first_bad is not None:
                stage, name, count, numel = watch.first_bad
                return found(
                    stage=stage, name=name, count=count, numel=numel, loss=float("nan"),
                    after=watch.last_good,
                )  # fmt: skip
            loss = h.loss(outputs)
            value = float(loss.detach())
            if not torch.isfinite(loss):
                return found(stage="loss", name="loss", count=1, numel=1, loss=value)
            loss.backward()
        params = dict(h.model.named_parameters())
        bad = tuple(n for n, p in params.items() if p.grad is not None and _bad([p.grad])[0])
        if watch.first_grad is not None:
            name, count, numel = watch.first_grad
            return found(
                stage="gradient", name=name, count=count, numel=numel, loss=value,
                nonfinite_grads=bad,
            )  # fmt: skip
        if bad:  # no module output saw it: the first parameter in reverse registration order
            grad = params[bad[-1]].grad
            assert grad is not None
            count, numel = _bad([grad])
            return found(
                stage="gradient", name=bad[-1], count=count, numel=numel, loss=value,
                nonfinite_grads=bad,
            )  # fmt: skip
        return found(stage=None, name=None, count=0, numel=0, loss=value)


def assert_finite(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> FiniteResult:
    """Check that parameters, buffers, every module output, the loss and all gradients are finite.

    Names the first offender in computation order: a parameter or buffer, then the first module
    (innermost first) whose output has a NaN/Inf, then the loss, then the first module output
    whose gradient does in backward order (the op just after that module has an infinite
    derivative), with the parameters that got NaN/Inf gradients.

    Proves: one training-mode step on this batch stays finite. Does not prove: training stays
    finite (a high learning rate can diverge later), or that float16 would.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_finite(model, batch, loss_fn, unpack=unpack, seed=seed)
    if not r.passed:
        fail(_explain(r), r, seed=r.seed, msg=msg)
    return r


def _explain(r: FiniteResult) -> Explanation:
    share = f"Non-finite values: {r.count} of {r.numel} are NaN/Inf"
    if r.stage in ("parameter", "buffer"):
        return Explanation(
            header=f"{r.stage.capitalize()} '{r.name}' is not finite!",
            lines=[share],
            causes=[
                "a previous training step diverged: lower the learning rate or clip gradients, "
                "and restart from a finite checkpoint",
                "loaded from a corrupt checkpoint or a bad custom init",
            ],
        )
    if r.stage in ("input", "output"):
        lines = [f"First non-finite value in forward: the {r.stage} of {r.name}", share]
        if r.after:
            lines.append(f"Last finite module output: {r.after}")
        return Explanation(
            header=f"The {r.stage} of {r.name} is the first non-finite value in forward!",
            lines=lines,
            causes=[
                "log, sqrt or pow of a value that can be zero or negative: clamp it "
                "(x.clamp_min(eps)) or use a stable op (log_softmax, logsumexp)",
                "a division by a value that can be zero: add an epsilon to the denominator",
                "activations overflow: check the init scale, use normalisation or float32",
            ],
        )
    if r.stage == "loss":
        return Explanation(
            header="The loss is not finite though every output is!",
            lines=[f"Loss: {r.loss}"],
            causes=[
                "log of a probability that underflows to zero: pass logits to F.cross_entropy "
                "or use log_softmax instead of log(softmax)",
                "a division by zero in the loss (a mean over an empty mask)",
            ],
        )
    where = (
        f"Parameter '{r.name}' has"
        if r.name in r.nonfinite_grads
        else f"The gradient at the output of {r.name} is"
    )
    return Explanation(
        header=f"{where} the first non-finite gradient in backward!",
        lines=[share, f"Parameters with NaN/Inf gradients: {names(r.nonfinite_grads) or 'none'}"],
        causes=[
            "the op right after it has an infinite derivative where it is evaluated: sqrt or "
            "norm of zero, pow(x, p<1) at zero, log near zero, acos/asin at ±1: add an epsilon",
            "torch.where/masking after a NaN-producing op: mask the input, not the output",
        ],
    )
