"""The loss at initialisation: no more confident than it has any right to be.

Karpathy's recipe, "verify loss @ init": with softmax cross-entropy over C classes a sane
initialisation gives about -ln(1/C) = ln C, because the network has not yet learned a preference.
A loss far above that means the outputs start out large and confidently wrong, and the first
steps are spent shrinking them (the "hockey stick" loss curve) instead of learning. A loss that
the outputs could never bring to its minimum, or that goes negative, means the model's output
and the loss disagree about what the output is (probabilities into a loss that wants logits).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import LossFn, check_number
from nnsanity._diagnosis import CONSISTENT, GENERIC, MEASURED, Cause, cause
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail, unpaired_explanation
from nnsanity._outputs import Kind, Outputs, unpaired_causes
from nnsanity._result import CheckResult, diagnosed
from nnsanity._structures import replace_at, select_output

# The bound "no more confident than random outputs of standard deviation NOISE_STD" is the mean
# loss of NOISE_DRAWS fixed-seed draws on this batch: 8 x batch-size samples keep its Monte Carlo
# error ~0.05 nats. Xavier and He inits give a last layer unit-variance outputs on unit-variance
# features (He's gain sqrt(2) up to 1.4x that on raw inputs; Glorot & Bengio 2010, He et al.
# 2015), T5's init ~1.1 and network2's N(0, 1) biases ~1.2-1.4: twice the unit scale admits all
# of them, while a last layer 10x too large (outputs of std ~10) lands far above.
NOISE_STD = 2.0
NOISE_DRAWS = 8
# A right prediction whose loss stays above FLOOR (in the loss's units) has a floor the outputs
# cannot pass: 1.46 nats for softmax applied twice over 10 classes.
FLOOR = 0.05


@dataclass(frozen=True, kw_only=True)
class InitLossResult(CheckResult):
    """What ``measure_init_loss`` measured; ``lower <= loss <= upper`` and no misuse pass."""

    loss: float  # the loss at initialisation, train mode, in the loss's unit (e.g. nats)
    expected: float  # the user's value, or the loss of the no-preference output
    lower: float  # the bounds
    upper: float
    output_kind: Kind  # what the judged output holds, read from its values
    zero_output_loss: float | None  # the loss of the no-preference output (ln C for C classes)
    noise_loss: float | None  # mean loss of random outputs of std NOISE_STD
    perfect_loss: float | None  # the loss of a confident right prediction: the loss's minimum
    n_classes: int | None  # C where the no-preference loss is ln C
    ln_classes: float | None
    summed_over: int | None  # the no-preference loss is this many times ln C: reduction='sum'
    output_std: float | None  # std of the output
    rtol: float | None
    unpaired: str | None = None  # how the loss fails to pair outputs with their own targets
    # the loss of the batch with every sample twice (outputs and targets), where it could be
    # computed: the same for a mean over the samples, twice the loss for a sum (any loss: MSE,
    # L1, cross-entropy)
    doubled_loss: float | None = None

    @property
    def batch_summed(self) -> bool:
        """The loss doubled with the batch: reduction='sum' (to float32 rounding, 1e-4)."""
        d, once = self.doubled_loss, self.loss
        if d is None or not math.isfinite(d) or not math.isfinite(once) or once == 0:
            return False
        return math.isclose(d, 2 * once, rel_tol=1e-4)

    @property
    def misuse(self) -> str | None:
        """How output and loss disagree, if they do: 'unpaired', 'negative', 'floor' or
        'summed'."""
        if self.unpaired is not None:
            return "unpaired"
        if self.perfect_loss is not None and self.perfect_loss < -FLOOR:
            return "negative"
        if self.output_kind == "probabilities" and (self.perfect_loss or 0.0) > FLOOR:
            return "floor"
        if (self.summed_over is not None or self.batch_summed) and self.rtol is None:
            return "summed"
        return None

    @property
    def passed(self) -> bool:
        return self.misuse is None and self.lower <= self.loss <= self.upper


def _references(h: Harness, outputs: Any) -> dict[str, Any] | None:
    """The no-preference loss, the random-output loss, the perfect-output loss and the kind;
    None where the output cannot be replaced or the loss is not finite on replacements."""
    out = Outputs(h, outputs)
    if not out.logits.is_floating_point():
        return None
    g = torch.Generator().manual_seed(h.seed)  # on the CPU: the same draws on every device
    zero = out.loss_at(torch.zeros_like(out.logits))
    noise = [
        out.loss_at(
            NOISE_STD
            * torch.randn(out.logits.shape, generator=g, dtype=out.logits.dtype).to(
                out.logits.device
            )
        )
        for _ in range(NOISE_DRAWS)
    ]
    if zero is None or not math.isfinite(zero) or any(n is None for n in noise):
        return None
    mean_noise = sum(n for n in noise if n is not None) / NOISE_DRAWS
    if not math.isfinite(mean_noise):
        return None
    return {
        "zero": zero,
        "noise": mean_noise,
        "perfect": out.perfect_loss(),
        "kind": out.kind,
        "std": float(out.logits.double().std()) if out.logits.numel() > 1 else 0.0,
        "unpaired": out.unpaired(),
    }


def _doubled(h: Harness, outputs: Any) -> float | None:
    """The loss with each sample of the batch twice, outputs and targets alike; None where
    that cannot be arranged (a model's own loss, targets or outputs without the batch first,
    an ``output=`` callable) or the loss rejects it."""
    targets = h.targets
    if h.self_loss or not isinstance(targets, torch.Tensor) or not targets.dim():
        return None
    logits, path = select_output(outputs, h.output)
    b = targets.shape[0]
    if path is None or not logits.dim() or logits.shape[0] != b or b != h.batch_size:
        return None
    twice = replace_at(outputs, path, torch.cat([logits, logits]))
    try:
        # the user's own call already warned of what the loss finds odd (a broadcast target),
        # at the batch's real size; a warning at the doubled size would only confuse
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(h.loss(twice, torch.cat([targets, targets])))
    except (TypeError, ValueError):
        return None


def _classes(zero_loss: float, logits: torch.Tensor, targets: Any) -> tuple[int | None, int | None]:
    """(C, None) if the no-preference loss is ln C, (C, m) if it is m x ln C over m targets."""
    dims = [logits.shape[-1]] + ([logits.shape[1]] if logits.dim() >= 2 else [])
    for size in dims:
        if size < 2:
            continue
        if math.isclose(zero_loss, math.log(size), rel_tol=1e-4):
            return int(size), None
        if isinstance(targets, torch.Tensor) and not targets.is_floating_point():
            m = int(((targets >= 0) & (targets < size)).sum())
            if m >= 2 and math.isclose(zero_loss, m * math.log(size), rel_tol=1e-4):
                return int(size), m
    return None, None


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
        doubled = _doubled(h, outputs)
    if refs is None and (expected is None or rtol is None):
        raise ValueError(
            "the default references, the loss of the no-preference output and of random "
            "outputs, are not available: the model must return a floating-point output (logits, "
            "log-probabilities or probabilities) for which the loss is finite. Pass expected= "
            "and rtol= instead, or output= to pick the output to judge."
        )
    zero = refs["zero"] if refs else None
    ref = zero if expected is None else expected
    assert ref is not None
    if rtol is not None:
        lower, upper = ref - rtol * abs(ref), ref + rtol * abs(ref)
    else:  # allow what random outputs of std NOISE_STD add over no preference at all
        assert refs is not None
        # a confident right prediction is the loss's minimum, unless the loss penalises
        # confidence (label smoothing): then its minimum lies elsewhere and is not bounded here
        perfect = refs["perfect"]
        lower = perfect if perfect is not None and perfect <= refs["zero"] else -math.inf
        upper = ref + (refs["noise"] - refs["zero"])
    n, summed = _classes(zero, logits, h.targets) if zero is not None else (None, None)
    r = InitLossResult(
        seed=h.seed,
        loss=loss,
        expected=ref,
        lower=min(lower, upper),
        upper=upper,
        output_kind=refs["kind"] if refs else "logits",
        zero_output_loss=zero,
        noise_loss=refs["noise"] if refs else None,
        perfect_loss=refs["perfect"] if refs else None,
        n_classes=n,
        ln_classes=math.log(n) if n else None,
        summed_over=summed,
        output_std=refs["std"] if refs else None,
        rtol=rtol,
        unpaired=refs["unpaired"] if refs else None,
        doubled_loss=doubled,
    )
    return diagnosed(r, _diagnose)


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

    The loss is measured once, in train mode (the loss the first optimisation step sees). The
    output it is judged on (``output=`` picks it from a dict or tuple; the logits by default) is
    read for its kind: probabilities (in [0, 1], summing to 1 over the class dimension),
    log-probabilities (logsumexp 0, as ``log_softmax`` gives for ``F.nll_loss``), or logits and
    plain values. The reference, ``expected`` by default, is the loss of the no-preference output
    of that kind (zero logits, uniform log-probabilities or probabilities): ln C for C-class
    cross-entropy (``n_classes``), 10 ln 2 for network2's summed binary cross-entropy over 10
    outputs, the mean squared target for MSE; it needs no knowledge of the loss. The bound is the
    mean loss of random outputs of standard deviation 2 of the same kind on this batch (8
    fixed-seed draws): ln 10 = 2.30 allows up to 3.76 for 10 classes, ln 96 = 4.56 up to 6.48.
    Twice the unit scale admits the field's inits (Xavier, He, PyTorch's default, GPT-2's 0.02,
    T5's ~1.1 output std) and catches a last layer scaled up 10x (a loss of 13.8 nats against a
    reference of 1.6). The loss may not lie below the loss of a confident right prediction (the
    loss's minimum). With ``expected`` the same allowance is added to it; with ``rtol`` the loss
    must lie in ``expected ± rtol·|expected|`` instead.

    It also fails when output and loss disagree: the loss goes negative for a right prediction
    (probabilities into ``NLLLoss``, or logits into it without ``log_softmax``), a right
    prediction in probabilities cannot bring the loss near 0 (softmax applied twice: probabilities
    into ``CrossEntropyLoss``), or the loss is summed over the batch (``reduction='sum'``, of
    any loss: the reference is m x ln C over the batch's m targets, or the batch with each
    sample twice, outputs and targets alike, has twice the loss where a mean keeps it; pass
    ``rtol`` to accept it).

    It proves the outputs start unconfident on this batch and fit the loss they are fed to. It
    does NOT prove the model can learn, nor that hidden layers are well scaled
    (:func:`nnsanity.assert_gradient_ratio`).

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_init_loss(
        model, batch, loss_fn, expected=expected, rtol=rtol, output=output, unpack=unpack,
        seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _diagnose(r: InitLossResult) -> list[Cause]:
    misuse = r.misuse
    kind = f"the output holds {r.output_kind}"
    if misuse == "unpaired":
        return unpaired_causes(r.unpaired)
    if misuse == "negative":
        return [
            cause("nll_without_log_softmax", "NLLLoss (F.nll_loss) receives probabilities or raw "
                  "logits: it expects log-probabilities; end the model with log_softmax, or use "
                  "F.cross_entropy on the logits", MEASURED if r.output_kind != "log-probabilities"
                  else CONSISTENT, evidence=(f"a right prediction's loss is {r.perfect_loss:.4g}",
                                             kind)),
            cause("unbounded_reward", "a loss that rewards large outputs without bound: fix the "
                  "sign of the custom loss"),
        ]  # fmt: skip
    if misuse == "floor":
        twice = cause(
            "softmax_twice",
            "softmax applied twice: the model returns probabilities "
            "(softmax at its end) and CrossEntropyLoss applies log_softmax itself; "
            "return the logits",
            MEASURED if r.n_classes else CONSISTENT,
            evidence=(kind, f"a right prediction's loss is {r.perfect_loss:.4g}"),
        )
        sigmoid = cause(
            "sigmoid_before_bce_with_logits",
            "sigmoid before BCEWithLogitsLoss, which applies it itself: return the logits",
            CONSISTENT if r.n_classes else MEASURED,
            evidence=(kind, f"a right prediction's loss is {r.perfect_loss:.4g}"),
        )
        return [twice, sigmoid]  # fmt: skip
    if misuse == "summed":
        evidence = (
            f"the no-preference loss is {r.summed_over} x ln {r.n_classes}"
            if r.summed_over is not None
            else f"each sample twice doubles the loss: {r.loss:.4g} -> {r.doubled_loss:.4g}"
        )
        return [
            cause("loss_summed", "reduction='sum': the loss and its gradient grow with the batch "
                  "size, so the learning rate must change with it; use reduction='mean'",
                  MEASURED, evidence=(evidence,)),
        ]  # fmt: skip
    if r.loss < r.lower:
        return [
            cause("loss_below_reference", "the loss is lower than expected: expected= does not "
                  "fit this loss (its reduction, its number of classes), or the loss is computed "
                  "on something other than the outputs and targets it was given (a stale tensor)"),
        ]  # fmt: skip
    large = r.output_std is not None and r.output_std > NOISE_STD
    return [
        cause("final_layer_too_large", "the final layer is too large: scale its weights down "
              "(e.g. x0.01) or zero them", CONSISTENT if large else GENERIC,
              evidence=(f"output std {r.output_std:.3g} (unit scale: up to {NOISE_STD:g})",)
              if large and r.output_std is not None else ()),
        cause("final_bias_not_prior", "the final bias is not the log class prior: set it to "
              "log(class frequencies), zero for balanced classes (the target mean for "
              "regression)"),
        cause("targets_misscaled", "the targets are mis-scaled (regression targets not "
              "standardised)"),
    ]  # fmt: skip


def _explain(r: InitLossResult) -> Explanation:
    what = {"positive": "positive values (rates or scales: references exp(z), 1 for no preference)"}
    kind = f"Output: {what.get(r.output_kind, r.output_kind)}" + (
        f" (std {r.output_std:.3g})" if r.output_std is not None else ""
    )
    misuse = r.misuse
    if misuse == "unpaired":
        return unpaired_explanation(r.unpaired)
    if misuse == "negative":
        return Explanation(
            header="The loss goes negative for a right prediction!",
            lines=[
                f"Loss of a confident right prediction: {r.perfect_loss:.4g} (a log-likelihood "
                "loss is at least 0)",
                f"Loss at initialisation: {r.loss:.4g}",
                kind,
            ],
        )
    if misuse == "floor":
        return Explanation(
            header="The loss cannot reach its minimum from these outputs!",
            lines=[
                f"Loss of a confident right prediction: {r.perfect_loss:.4g} (near 0 required)",
                kind + ", but the loss treats them as logits",
            ],
        )
    if misuse == "summed":
        return Explanation(
            header="The loss is summed over the batch!",
            lines=[
                f"Loss of the no-preference output: {r.zero_output_loss:.4g} = {r.summed_over} x "
                f"ln {r.n_classes} (ln {r.n_classes} per target expected)"
                if r.summed_over is not None
                else f"Loss: {r.loss:.4g}; with each sample twice: {r.doubled_loss:.4g} "
                "(the same expected of a mean over the samples)",
            ],
            relax="expected= and rtol= to accept a summed loss.",
        )
    if r.rtol is not None:
        bound = (
            f"(within [{r.lower:.4g}, {r.upper:.4g}] required: expected {r.expected:.4g} "
            f"± {r.rtol:g})"
        )
    elif r.loss < r.lower:
        bound = f"(at least {r.lower:.4g} required: the loss of a confident right prediction)"
    else:
        ln_c = f" = ln {r.n_classes}" if r.n_classes else ""
        bound = (
            f"(up to {r.upper:.4g} allowed: the mean loss of random outputs of std {NOISE_STD:g} "
            f"on this batch; the no-preference output gives {r.expected:.4g}{ln_c})"
        )
    lines = [
        f"Loss at initialisation: {r.loss:.4g} {bound} (train mode: the loss the first step sees)",
        kind,
    ]
    return Explanation(
        header="Loss at initialisation is too high!"
        if r.loss > r.upper
        else "Loss at initialisation is out of range!",
        lines=lines,
        relax="expected= and rtol= to compare with your own reference instead.",
    )
