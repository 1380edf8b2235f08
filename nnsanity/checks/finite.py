"""No NaN or Inf anywhere in one training step: parameters, outputs, loss and gradients.

A NaN spreads to everything downstream of it, so the useful answer is where it appeared first:
the check walks the step in the order values are computed and names the first offender.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from nnsanity._arguments import (
    LossFn,
    check_batch,
    check_model,
    check_seed,
    compute_loss,
    forward,
    tensors_in,
)
from nnsanity._messages import failure
from nnsanity._state import autograd, isolated
from nnsanity.seeding import seed_torch

Stage = Literal["parameter", "buffer", "input", "output", "loss", "gradient"]


@dataclass(frozen=True)
class FiniteResult:
    """Where the first NaN/Inf appeared (``stage`` is None when everything is finite)."""

    stage: Stage | None
    name: str | None  # parameter/buffer name, or the module whose output (gradient) it is
    count: int  # NaN/Inf values in that tensor
    numel: int
    loss: float  # NaN when the loss could not be computed finitely
    nonfinite_grads: tuple[str, ...] = ()  # every parameter with a NaN/Inf gradient
    after: str | None = None  # the last module whose output was finite, for input/output

    @property
    def ok(self) -> bool:
        return self.stage is None


def _bad(tensors: list[torch.Tensor]) -> tuple[int, int]:
    """(non-finite values, values) over the floating-point tensors."""
    floats = [t.detach() for t in tensors if t.is_floating_point() or t.is_complex()]
    return sum(int((~torch.isfinite(t)).sum()) for t in floats), sum(t.numel() for t in floats)


def measure_finite(
    model: torch.nn.Module, batch: Any, loss_fn: LossFn, *, seed: int = 0
) -> FiniteResult:
    """One forward and backward in training mode, stopping at the first non-finite stage."""
    check_model(model)
    check_seed(seed)
    inputs, targets = check_batch(batch, model)
    with isolated(model):
        seed_torch(seed)
        model.train()
        for stage, named in (
            ("parameter", model.named_parameters()),
            ("buffer", model.named_buffers()),
        ):
            for name, t in named:
                count, numel = _bad([t])
                if count:
                    return FiniteResult(stage, name, count, numel, float("nan"))

        first_bad: list[tuple[Stage, str, int, int]] = []  # in forward's order of events
        last_good: list[str] = []  # the latest module whose output was finite
        first_grad: list[tuple[str, int, int]] = []  # in the order backward reaches outputs

        def label(name: str, m: torch.nn.Module) -> str:
            return f"'{name}' ({type(m).__name__})" if name else f"{type(m).__name__} (the model)"

        def on_input(name: str, m: torch.nn.Module) -> Any:
            def hook(_: torch.nn.Module, args: Any) -> None:
                count, numel = _bad(tensors_in(args))
                if count and not first_bad:  # made by a functional op in the parent's forward
                    first_bad.append(("input", label(name, m), count, numel))

            return hook

        def on_forward(name: str, m: torch.nn.Module) -> Any:
            def hook(_: torch.nn.Module, args: Any, output: Any) -> None:
                tensors = tensors_in(output)
                count, numel = _bad(tensors)
                if count and not first_bad:
                    first_bad.append(("output", label(name, m), count, numel))
                elif not first_bad:
                    last_good[:] = [label(name, m)]
                for t in tensors:
                    if t.requires_grad:
                        t.register_hook(on_grad(label(name, m)))

            return hook

        def on_grad(name: str) -> Any:
            def hook(grad: torch.Tensor) -> None:
                count, numel = _bad([grad])
                if count and not first_grad:
                    first_grad.append((name, count, numel))

            return hook

        handles = [
            h
            for n, m in model.named_modules()
            for h in (
                m.register_forward_pre_hook(on_input(n, m)),
                m.register_forward_hook(on_forward(n, m)),
            )
        ]
        with autograd():  # even when the caller is inside no_grad() or inference_mode()
            try:
                for p in model.parameters():
                    p.grad = None
                outputs = forward(model, inputs)
                if first_bad:
                    after = last_good[0] if last_good else None
                    return FiniteResult(*first_bad[0], float("nan"), after=after)
                loss = compute_loss(loss_fn, outputs, targets)
                value = float(loss.detach())
                if not torch.isfinite(loss):
                    return FiniteResult("loss", "loss", 1, 1, value)
                loss.backward()
            finally:
                for h in handles:
                    h.remove()
        bad = tuple(
            n for n, p in model.named_parameters() if p.grad is not None and _bad([p.grad])[0]
        )
        if first_grad:
            return FiniteResult("gradient", *first_grad[0], value, bad)
        if bad:  # no module output saw it: the first parameter in reverse registration order
            count, numel = _bad([dict(model.named_parameters())[bad[-1]].grad])
            return FiniteResult("gradient", bad[-1], count, numel, value, bad)
        return FiniteResult(None, None, 0, 0, value)


def assert_finite(
    model: torch.nn.Module, batch: Any, loss_fn: LossFn, *, seed: int = 0
) -> FiniteResult:
    """Check that parameters, buffers, every module output, the loss and all gradients are finite.

    Names the first offender in computation order: a parameter or buffer, then the first module
    (innermost first) whose output has a NaN/Inf, then the loss, then the first module output
    whose gradient does in backward order (the op just after that module has an infinite
    derivative), with the parameters that got NaN/Inf gradients.

    Proves: one training-mode step on this batch stays finite. Does not prove: training stays
    finite (a high learning rate can diverge later), or that float16 would.
    """
    __tracebackhide__ = True
    r = measure_finite(model, batch, loss_fn, seed=seed)
    if r.ok:
        return r
    share = f"{r.count} of {r.numel} values are NaN/Inf"
    diverged = (
        "a previous training step diverged: lower the learning rate or clip gradients, "
        "and restart from a finite checkpoint"
    )
    if r.stage in ("parameter", "buffer"):
        raise failure(
            f"{r.stage.capitalize()} '{r.name}' is not finite",
            share,
            [diverged, "loaded from a corrupt checkpoint or a bad custom init"],
            None,
            r,
        )
    if r.stage in ("input", "output"):
        after = f" (last finite module output: {r.after})" if r.after else ""
        raise failure(
            f"The {r.stage} of {r.name} is the first non-finite value in forward{after}",
            share,
            [
                "log, sqrt or pow of a value that can be zero or negative: clamp it "
                "(x.clamp_min(eps)) or use a stable op (log_softmax, logsumexp)",
                "a division by a value that can be zero: add an epsilon to the denominator",
                "activations overflow: check the init scale, use normalisation or float32",
            ],
            None,
            r,
        )
    if r.stage == "loss":
        raise failure(
            "The loss is not finite though every output is",
            f"loss = {r.loss}",
            [
                "log of a probability that underflows to zero: pass logits to F.cross_entropy "
                "or use log_softmax instead of log(softmax)",
                "a division by zero in the loss (a mean over an empty mask)",
            ],
            None,
            r,
        )
    bad = ", ".join(f"'{n}'" for n in r.nonfinite_grads[:5])
    more = f" and {len(r.nonfinite_grads) - 5} more" if len(r.nonfinite_grads) > 5 else ""
    where = (
        f"Parameter '{r.name}' has"
        if r.name in r.nonfinite_grads
        else f"The gradient at the output of {r.name} is"
    )
    raise failure(
        f"{where} the first non-finite gradient in backward",
        f"{share}; parameters with NaN/Inf gradients: {bad or 'none'}{more}",
        [
            "the op right after it has an infinite derivative where it is evaluated: sqrt or "
            "norm of zero, pow(x, p<1) at zero, log near zero, acos/asin at ±1: add an epsilon",
            "torch.where/masking after a NaN-producing op: mask the input, not the output",
        ],
        None,
        r,
    )
