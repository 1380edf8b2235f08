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

from nnsanity._arguments import LossFn, check_number
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail
from nnsanity._result import CheckResult

# The reference "no more confident than unit-scale random logits" is the mean loss of this many
# fixed-seed draws of N(0, 1) outputs: 8 x batch-size samples keep its Monte Carlo error ~0.05 nats.
NOISE_DRAWS = 8


@dataclass(frozen=True, kw_only=True)
class InitLossResult(CheckResult):
    """What ``measure_init_loss`` measured; ``lower <= loss <= upper`` is the pass criterion."""

    loss: float  # the loss at initialisation, train mode
    expected: float  # the user's value, or the loss of all-zero outputs
    lower: float  # the bounds: -inf unless rtol was given
    upper: float
    zero_output_loss: float | None  # the loss of all-zero outputs
    unit_noise_loss: float | None  # mean loss of i.i.d. N(0, 1) outputs
    n_classes: int | None  # C where the zero-output loss is ln C (softmax cross-entropy)
    ln_classes: float | None
    output_std: float | None  # std of the outputs; ~1 or below at a sane init
    rtol: float | None

    @property
    def passed(self) -> bool:
        return self.lower <= self.loss <= self.upper


def _references(h: Harness, outputs: Any) -> tuple[float, float, float] | None:
    """Loss of all-zero outputs, mean loss of N(0, 1) outputs, and the outputs' std; or None
    where they do not apply (no float output to replace, or a loss not finite on them)."""
    logits = h.logits(outputs)
    if not logits.is_floating_point():
        return None
    g = torch.Generator().manual_seed(h.seed)  # on the CPU: the same draws on every device
    draws = [
        torch.randn(logits.shape, generator=g, dtype=logits.dtype).to(logits.device)
        for _ in range(NOISE_DRAWS)
    ]
    try:
        zero = h.loss_of_logits(outputs, torch.zeros_like(logits))
        noise = [h.loss_of_logits(outputs, d) for d in draws]
    except ValueError:  # e.g. a loss that insists on probabilities in [0, 1]
        return None
    if zero is None or any(n is None for n in noise):
        return None
    z, n = float(zero), sum(float(v) for v in noise if v is not None) / NOISE_DRAWS
    if not (math.isfinite(z) and math.isfinite(n)):
        return None
    return z, n, float(logits.double().std()) if logits.numel() > 1 else 0.0


def _classes(zero_loss: float, logits: torch.Tensor) -> int | None:
    """The class dimension's size C if the zero-output loss is exactly ln C, else None."""
    dims = [logits.shape[-1]] + ([logits.shape[1]] if logits.dim() >= 2 else [])
    for size in dims:
        if size >= 2 and math.isclose(zero_loss, math.log(size), rel_tol=1e-4):
            return int(size)
    return None


def measure_init_loss(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    expected: float | None = None,
    rtol: float | None = None,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
) -> InitLossResult:
    """Measure the loss of the untrained model on ``batch`` and the references it is judged by.

    See :func:`assert_init_loss` for the references and the bound. Never raises ``SanityError``.
    """
    if expected is not None:
        expected = check_number(expected, "expected", what="a finite number (the loss at init)")
    if rtol is not None:
        rtol = check_number(rtol, "rtol", low=0, low_open=True, what="a positive number")
    h = Harness(model, batch, loss_fn, seed=seed, output=output, unpack=unpack)
    with h.isolated(), torch.no_grad():  # train mode: the loss the first step sees
        outputs = h.forward()
        loss = float(h.loss(outputs))
        refs = _references(h, outputs)
        logits = h.logits(outputs)
    if refs is None and (expected is None or rtol is None):
        raise ValueError(
            "the default reference, the loss of all-zero and of unit-noise outputs, is not "
            "available: the model must return one floating-point tensor of logits for which "
            "the loss is finite (not probabilities). Pass expected= and rtol= instead."
        )
    zero_loss, noise_loss, output_std = refs or (None, None, None)
    ref = zero_loss if expected is None else expected
    assert ref is not None
    if rtol is None:  # allow what unit-scale random outputs add over "no preference at all"
        assert noise_loss is not None and zero_loss is not None
        lower, upper = -math.inf, ref + (noise_loss - zero_loss)
    else:
        lower, upper = ref - rtol * abs(ref), ref + rtol * abs(ref)
    n = _classes(zero_loss, logits) if zero_loss is not None else None
    return InitLossResult(
        seed=h.seed,
        loss=loss,
        expected=ref,
        lower=lower,
        upper=upper,
        zero_output_loss=zero_loss,
        unit_noise_loss=noise_loss,
        n_classes=n,
        ln_classes=math.log(n) if n else None,
        output_std=output_std,
        rtol=rtol,
    )


def assert_init_loss(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    expected: float | None = None,
    rtol: float | None = None,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
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

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_init_loss(
        model, batch, loss_fn, expected=expected, rtol=rtol, output=output, unpack=unpack,
        seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, seed=r.seed, msg=msg)
    return r


def _explain(r: InitLossResult) -> Explanation:
    if r.rtol is not None:
        bound = (
            f"(within [{r.lower:.4g}, {r.upper:.4g}] required: expected {r.expected:.4g} "
            f"± {r.rtol:g})"
        )
        relax = "a larger rtol= (or a different expected=)."
    elif r.zero_output_loss is not None and r.expected == r.zero_output_loss:
        ln_c = f" = ln {r.n_classes}" if r.n_classes else ""
        bound = (
            f"(up to {r.upper:.4g} allowed: the loss of unit-scale random outputs; all-zero "
            f"outputs give {r.expected:.4g}{ln_c})"
        )
        relax = "expected= and rtol= to compare with your own reference instead."
    else:
        bound = (
            f"(up to {r.upper:.4g} allowed: the expected {r.expected:.4g} plus the "
            f"{r.upper - r.expected:.3g} that unit-scale random outputs add)"
        )
        relax = "expected= and rtol= to compare with your own reference instead."
    lines = [f"Loss at initialisation: {r.loss:.4g} {bound}"]
    if r.output_std is not None:
        lines.append(f"Output std: {r.output_std:.3g} (about 1 or below at a sane init)")
    if r.loss < r.lower:
        causes = [
            "the loss is lower than expected at init: does the loss see the targets through the "
            "inputs (label leakage), or is expected= wrong for this loss?"
        ]
    else:
        causes = [
            "the final layer is too large: scale its weights down (e.g. x0.01) or zero them",
            "the final bias is not the log class prior: set it to log(class frequencies), "
            "zero for balanced classes (the target mean for regression)",
            "the loss receives the wrong thing: probabilities instead of logits, or mis-scaled "
            "targets",
        ]
    return Explanation(
        header="Loss at initialisation is too high!"
        if r.loss > r.upper
        else "Loss at initialisation is out of range!",
        lines=lines,
        causes=causes,
        relax=relax,
    )
