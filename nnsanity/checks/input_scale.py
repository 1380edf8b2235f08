"""Input scale: the float features reach the first layer at about the scale its init expects.

Karpathy's recipe ("become one with the data"; "visualize just before the net": decode exactly
what goes into the network) and LeCun et al.'s "Efficient BackProp" (1998, sec. 4.3: normalise
the inputs). The classic bugs are raw 0-255 pixels (RMS ~100) and inputs normalised twice:
pixels divided by 255 again after ``ToTensor`` (RMS ~0.002), or standardised twice with the
dataset's mean and std (RMS 3-6). The measurement lives in ``nnsanity._input_scale``, so another
check can name the inputs' scale as the cause of what it sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import check_number
from nnsanity._diagnosis import CONSISTENT, GENERIC, MEASURED, Cause
from nnsanity._harness import Harness
from nnsanity._input_scale import MAX_RMS, MIN_RMS, Feature, measure
from nnsanity._messages import Explanation, Msg, at_least, fail, up_to
from nnsanity._result import CheckResult, diagnosed


@dataclass(frozen=True, kw_only=True)
class InputScaleResult(CheckResult):
    """The batch's float features and the RMS the first layer receives from them."""

    min_rms: float  # the bounds on ``rms``
    max_rms: float
    features: tuple[Feature, ...]  # every float data tensor: RMS, mean, std, min, max
    first_layer: str | None  # the first module the data reaches that owns a weight or normalises
    first_layer_type: str | None
    normalises: bool  # that module normalises its input: the scale is not judged
    rms: float | None  # RMS of that module's input (of the raw features if none was found);
    # None when nothing is judged (no float data, or a normalisation layer first)

    @property
    def passed(self) -> bool:
        return self.rms is None or self.min_rms <= self.rms <= self.max_rms


def measure_input_scale(
    model: torch.nn.Module,
    batch: Any,
    *,
    min_rms: float = MIN_RMS,
    max_rms: float = MAX_RMS,
    unpack: bool | None = None,
    perturb: Any = None,
    seed: int = 0,
) -> InputScaleResult:
    """Measure the float features and the scale the first layer receives. See the assert."""
    min_rms = check_number(min_rms, "min_rms", low=0, what="a number >= 0")
    max_rms = check_number(max_rms, "max_rms", low=min_rms, what=f"a number >= min_rms={min_rms:g}")
    h = Harness(model, batch, seed=seed, unpack=unpack, perturb=perturb, needs_loss=False)
    with h.isolated(train=False):
        scale = measure(h)
    r = InputScaleResult(
        seed=h.seed,
        min_rms=min_rms,
        max_rms=max_rms,
        features=scale.features,
        first_layer=scale.first_layer,
        first_layer_type=scale.first_layer_type,
        normalises=scale.normalises,
        rms=scale.rms,
    )
    return diagnosed(r, _diagnose)


def assert_input_scale(
    model: torch.nn.Module,
    batch: Any,
    *,
    min_rms: float = MIN_RMS,
    max_rms: float = MAX_RMS,
    unpack: bool | None = None,
    perturb: Any = None,
    seed: int = 0,
    msg: Msg = None,
) -> InputScaleResult:
    """Check that the float features reach the first layer at about unit scale.

    One forward pass in eval mode follows the batch's float data tensors (``Harness.roles``:
    token ids, masks, lengths and position ids are not features; ``perturb=`` names the data
    instead) to the first module they reach that owns a weight matrix (Linear, Conv, LSTM,
    attention) or normalises (BatchNorm, LayerNorm, RMSNorm). The RMS of what that module receives
    must be within [``min_rms``, ``max_rms``] = [0.01, 3]; scaling done inside the model counts
    (``forward`` dividing by 255 passes raw pixels), and a normalisation layer first makes the
    scale irrelevant (nothing judged). Where the data reaches no such module through autograd,
    the raw float tensors are judged instead.

    Source: weight inits (LeCun 1998, Glorot & Bengio 2010, He et al. 2015) are derived for
    inputs of unit-order second moment. Bounds: above 3 a tanh/sigmoid first layer at LeCun or
    Glorot scale starts mostly saturated; standardised inputs have RMS 1 and images in [0, 1]
    0.3-0.6, while raw pixels have 70-150 and images standardised twice 3.3 (MNIST) to 5.9
    (ImageNet). Below 0.01 the first layer's outputs start over 100x below their designed scale:
    pixels divided by 255 twice have ~0.002, while one-hot codes over up to 10,000 categories
    pass. The healthy zoo's inputs (standard normal, uniform [0, 1], padded sequences) have RMS
    0.5-1.0; its token models have no float features.

    Proves: on this batch, the features the first layer sees are on the scale its init assumes.
    Does not prove: each feature is (one feature in raw units among standardised ones moves the
    RMS little), that integer inputs are right (uint8 pixels the model casts to float are not
    followed), or that the features mean what they should.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_input_scale(
        model, batch, min_rms=min_rms, max_rms=max_rms, unpack=unpack, perturb=perturb, seed=seed
    )
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _diagnose(r: InputScaleResult) -> list[Cause]:
    assert r.rms is not None
    f = r.features[0] if r.features else None
    at = r.first_layer or None
    if r.rms > r.max_rms:
        pixels = f is not None and f.min >= 0 and 100 <= f.max <= 255
        spread = f"{f.where}: range [{f.min:.3g}, {f.max:.3g}]" if f else ""
        return [
            Cause(id="raw_pixels", summary="raw 0-255 pixels",
                  remedy="scale to [0, 1] (ToTensor does) and normalise with the dataset's mean "
                  "and std", evidence=(spread,) if pixels else (), where=at,
                  support=MEASURED if pixels else GENERIC),
            Cause(id="raw_units", summary="features in their raw units",
                  remedy="standardise each one ((x - mean) / std, with the training set's "
                  "statistics)", where=at,
                  support=CONSISTENT if f is not None and not pixels and f.std > r.max_rms
                  else GENERIC),
            Cause(id="normalised_twice", summary="inputs normalised twice with mean/std (in the "
                  "dataset and again in the model or a transform)", remedy="normalise once",
                  where=at),
        ]  # fmt: skip
    twice = f is not None and f.min >= 0 and 0 < f.max <= 1.01 / 255
    return [
        Cause(id="divided_by_255_twice", summary="inputs scaled twice: divided by 255 after "
              "ToTensor already scaled to [0, 1]", remedy="divide once",
              evidence=(f"{f.where}: range [{f.min:.3g}, {f.max:.3g}], at most 1/255",)
              if twice and f is not None else (), where=at,
              support=MEASURED if twice else GENERIC),
        Cause(id="wrong_statistic", summary="divided by a wrong statistic (a std or max far "
              "larger than the data's)", remedy="use the training set's own std", where=at),
        Cause(id="mostly_zeros", summary="inputs mostly zeros (a mask or padding applied to the "
              "features)", remedy="check the pipeline", where=at),
    ]  # fmt: skip


def _explain(r: InputScaleResult) -> Explanation:
    assert r.rms is not None
    high = r.rms > r.max_rms
    where = (
        f"what '{r.first_layer}' ({r.first_layer_type}) receives"
        if r.first_layer
        else "the float inputs (no layer found that receives them)"
    )
    measured = f"{r.rms:.3g}"
    lines = [
        f"RMS of {where}: "
        + (up_to(measured, f"{r.max_rms:g}") if high else at_least(measured, f"{r.min_rms:g}"))
    ]
    lines += [
        f"{f.where}: mean {f.mean:.3g}, std {f.std:.3g}, range [{f.min:.3g}, {f.max:.3g}]"
        for f in r.features[:4]
    ]
    if high:
        return Explanation(
            header="Inputs are far above the scale the first layer expects!",
            lines=lines,
            relax="max_rms= (larger).",
        )
    return Explanation(
        header="Inputs are far below the scale the first layer expects!",
        lines=lines,
        relax="min_rms= (smaller).",
    )
