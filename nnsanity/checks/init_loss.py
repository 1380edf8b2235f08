"""The loss at initialisation: no more confident than it has any right to be.

Karpathy's recipe, "verify loss @ init": with softmax cross-entropy over C classes a sane
initialisation gives about -ln(1/C) = ln C, because the network has not yet learned a preference.
A loss far above that means the outputs start out large and confidently wrong, and the first
steps are spent shrinking them (the "hockey stick" loss curve) instead of learning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import (
    LossFn,
    check_batch,
    check_model,
    check_seed,
    compute_loss,
    forward,
)
from nnsanity._messages import failure
from nnsanity._state import isolated
from nnsanity.seeding import seed_torch

# The reference "no more confident than unit-scale random logits" is the mean loss of this many
# fixed-seed draws of N(0, 1) outputs: 8 x batch-size samples keep its Monte Carlo error ~0.05 nats.
NOISE_DRAWS = 8


@dataclass(frozen=True)
class InitLossResult:
    """What ``measure_init_loss`` measured; ``lower <= loss <= upper`` is the pass criterion."""

    loss: float  # loss_fn(model(inputs), targets) at initialisation, train mode
    expected: float  # the user's value, or the loss of all-zero outputs
    lower: float  # -inf unless rtol was given
    upper: float
    zero_output_loss: float | None  # loss_fn(zeros_like(outputs), targets)
    unit_noise_loss: float | None  # mean loss of i.i.d. N(0, 1) outputs
    n_classes: int | None  # C where the zero-output loss is ln C (softmax cross-entropy)
    ln_classes: float | None
    output_std: float | None  # std of the outputs; ~1 or below at a sane init
    rtol: float | None

    @property
    def passed(self) -> bool:
        return self.lower <= self.loss <= self.upper


def _references(
    loss_fn: LossFn, outputs: Any, targets: Any, seed: int
) -> tuple[float, float, float] | None:
    """Loss of all-zero outputs, mean loss of N(0, 1) outputs, and the outputs' std; or None
    where they do not apply (outputs not one float tensor, or loss_fn not finite on them)."""
    if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point():
        return None
    g = torch.Generator().manual_seed(seed)  # on the CPU: the same draws on every device
    draws = [
        torch.randn(outputs.shape, generator=g, dtype=outputs.dtype).to(outputs.device)
        for _ in range(NOISE_DRAWS)
    ]
    try:
        zero = float(compute_loss(loss_fn, torch.zeros_like(outputs), targets))
        noise = sum(float(compute_loss(loss_fn, d, targets)) for d in draws) / NOISE_DRAWS
    except ValueError:  # e.g. a loss that insists on probabilities in [0, 1]
        return None
    if not (math.isfinite(zero) and math.isfinite(noise)):
        return None
    return zero, noise, float(outputs.double().std()) if outputs.numel() > 1 else 0.0


def _classes(zero_loss: float, outputs: torch.Tensor) -> int | None:
    """The class dimension's size C if the zero-output loss is exactly ln C, else None."""
    dims = [outputs.shape[-1]] + ([outputs.shape[1]] if outputs.dim() >= 2 else [])
    for size in dims:
        if size >= 2 and math.isclose(zero_loss, math.log(size), rel_tol=1e-4):
            return int(size)
    return None


def _check_options(expected: Any, rtol: Any, seed: Any) -> None:
    if expected is not None and (
        not isinstance(expected, (int, float))
        or isinstance(expected, bool)
        or not math.isfinite(expected)
    ):
        raise TypeError(
            f"expected must be a finite number (the loss you expect at init), got {expected!r}."
        )
    if rtol is not None and (
        not isinstance(rtol, (int, float)) or isinstance(rtol, bool) or not 0 < rtol < math.inf
    ):
        raise ValueError(f"rtol must be a positive number, e.g. rtol=0.1 for ±10%, got {rtol!r}.")
    check_seed(seed)


def measure_init_loss(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn,
    *,
    expected: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
) -> InitLossResult:
    """Measure the loss of the untrained model on ``batch`` and the references it is judged by.

    See :func:`assert_init_loss` for the references and the bound. Never raises ``SanityError``.
    """
    check_model(model)
    _check_options(expected, rtol, seed)
    inputs, targets = check_batch(batch, model)
    with isolated(model):
        seed_torch(seed)
        model.train()  # the loss the first training step sees
        with torch.no_grad():
            outputs = forward(model, inputs)
            loss = float(compute_loss(loss_fn, outputs, targets))
            refs = _references(loss_fn, outputs, targets, seed)
    if refs is None and (expected is None or rtol is None):
        raise ValueError(
            "the default reference, the loss of all-zero and of unit-noise outputs, is not "
            "available: the model must return one floating-point tensor of logits for which "
            "loss_fn is finite (not probabilities). Pass expected= and rtol= instead."
        )
    zero_loss, noise_loss, output_std = refs or (None, None, None)
    ref = zero_loss if expected is None else float(expected)
    if rtol is None:  # allow what unit-scale random outputs add over "no preference at all"
        lower, upper = -math.inf, ref + (noise_loss - zero_loss)
    else:
        lower, upper = ref - rtol * abs(ref), ref + rtol * abs(ref)
    n = _classes(zero_loss, outputs) if refs else None
    return InitLossResult(
        loss,
        ref,
        lower,
        upper,
        zero_loss,
        noise_loss,
        n,
        math.log(n) if n else None,
        output_std,
        None if rtol is None else float(rtol),
    )


def assert_init_loss(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn,
    *,
    expected: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
) -> InitLossResult:
    """Assert that the loss at initialisation is no larger than an uninformed guess allows.

    The loss is measured once, in train mode (the loss the first optimisation step sees), on
    ``batch``. The default ``expected`` is the loss of all-zero outputs,
    ``loss_fn(zeros_like(outputs), targets)``: zero logits are "no preference", so for C-class
    softmax cross-entropy this is exactly ln C (reported as ``n_classes``/``ln_classes``), for
    network2's summed binary cross-entropy over 10 sigmoid outputs 10 ln 2, for MSE the mean
    squared target; it needs no knowledge of the loss. The default bound is the mean loss of
    i.i.d. N(0, 1) outputs of the same shape (fixed-seed draws): at init the model should be no
    more confident than unit-scale random logits (ln 10 = 2.30 becomes ~2.74 for 10 classes).
    The check is one-sided by default, since a loss below the reference is a good init (e.g. the
    final bias set to the log class prior). With ``expected`` the same allowance is added to it;
    with ``rtol`` the loss must lie in ``expected ± rtol·|expected|`` instead.

    It proves the outputs start unconfident on this batch. It does NOT prove the model can learn,
    nor that the init of hidden layers is well scaled (:func:`nnsanity.assert_gradient_ratio`
    catches vanishing or exploding gradients across layers), and the default assumes the model
    returns logits/scores where 0 means "no preference"; for outputs such as probabilities pass
    ``expected`` and ``rtol``.
    """
    __tracebackhide__ = True
    r = measure_init_loss(model, batch, loss_fn, expected=expected, rtol=rtol, seed=seed)
    if r.passed:
        return r
    if r.rtol is not None:
        bound = f"outside [{r.lower:.4g}, {r.upper:.4g}] (expected {r.expected:.4g} ± {r.rtol:g})"
        relax = "Pass a larger rtol= (or a different expected=) to relax."
    else:
        if expected is None:
            ln_c = f" = ln {r.n_classes}" if r.n_classes else ""
            bound = (
                f"above {r.upper:.4g}, the loss of unit-scale random outputs (all-zero "
                f"outputs: {r.expected:.4g}{ln_c})"
            )
        else:
            bound = (
                f"above {r.upper:.4g}, the expected {r.expected:.4g} plus the "
                f"{r.upper - r.expected:.3g} that unit-scale random outputs add"
            )
        relax = "Pass expected= and rtol= to compare with your own reference instead."
    std = f"; outputs have std {r.output_std:.3g}" if r.output_std is not None else ""
    too_low = r.loss < r.lower
    causes = (
        [
            "the loss is lower than expected at init: does the loss see the targets through the "
            "inputs (label leakage), or is expected= wrong for this loss?"
        ]
        if too_low
        else [
            "the final layer is too large: scale its weights down (e.g. x0.01) or zero them",
            "the final bias is not the log class prior: set it to log(class frequencies), "
            "zero for balanced classes (the target mean for regression)",
            "the loss receives the wrong thing: probabilities instead of logits, or mis-scaled "
            "targets",
        ]
    )
    raise failure(
        f"Loss at initialisation is {r.loss:.4g}", f"{bound}{std}", causes, relax, result=r
    )
