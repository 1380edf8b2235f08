"""The scale of the float features a model's first layer receives.

Weight initialisations assume inputs of about unit second moment: LeCun et al. ("Efficient
BackProp", 1998, sec. 4.3) ask for inputs of mean about zero and similar, unit-order variances;
Glorot & Bengio (2010) and He et al. (2015) derive their scales for such inputs, so that a first
layer at 1/sqrt(fan_in) passes the input's RMS on unchanged. What matters is what reaches that
layer, after any scaling the model does itself (``x / 255`` inside forward): it is found by
following the data through one forward pass, with the data tensors the only ones requiring a
gradient, to the first module that owns a weight matrix or normalises. Integer ids and masks are
not features; only float data tensors (``Harness.roles``) are followed.

``measure`` is what ``assert_input_scale`` judges; other checks can call it (or ``cause``) to
name the inputs' scale as the cause of a failure they see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._depth import owns_weight
from nnsanity._diagnosis import CONSISTENT, Cause
from nnsanity._harness import Harness
from nnsanity._state import autograd, preserved_module
from nnsanity._structures import describe, tensors_in

# The default band for the RMS of what the first weight layer receives. Above MAX_RMS a tanh or
# sigmoid first layer at LeCun/Glorot scale starts with most pre-activations beyond +-2 (most
# units saturated); inputs standardised once have RMS 1, images in [0, 1] or [-1, 1] 0.3-0.6,
# raw 0-255 pixels 70-150 and images standardised twice with their own mean/std 3.3 (MNIST) to
# 5.9 (ImageNet). Below MIN_RMS the first layer starts over 100x below the scale its init was
# designed for: pixels divided by 255 twice have RMS ~0.002, while a one-hot code over up to
# 10,000 categories (RMS 1/sqrt(d) >= 0.01) and audio waveforms in [-1, 1] stay within.
MIN_RMS, MAX_RMS = 0.01, 3.0


@dataclass(frozen=True, kw_only=True)
class Feature:
    """Summary statistics of one float data tensor of the batch, over all its elements."""

    where: str  # how the user would write it: inputs, inputs['pixel_values'], inputs[0]
    rms: float
    mean: float
    std: float
    min: float
    max: float


@dataclass(frozen=True, kw_only=True)
class InputScale:
    """The batch's float features and the scale its first layer receives from them."""

    features: tuple[Feature, ...]  # every float data tensor (empty: nothing to judge)
    first_layer: str | None  # the first module the data reaches that owns a weight or normalises
    first_layer_type: str | None
    normalises: bool  # that module is a normalisation layer: the input's scale does not matter
    rms: float | None  # the RMS judged: of the first layer's input, else of the raw features

    def outside(self, low: float = MIN_RMS, high: float = MAX_RMS) -> bool:
        return self.rms is not None and not low <= self.rms <= high


def _is_norm(m: torch.nn.Module) -> bool:
    norms = (
        torch.nn.modules.batchnorm._NormBase,
        torch.nn.LayerNorm,
        torch.nn.GroupNorm,
        torch.nn.LocalResponseNorm,
    )
    if isinstance(m, norms):
        return True
    # RMSNorm, LlamaRMSNorm, T5LayerNorm: a leaf named for it with gains only (not a container
    # such as torchvision's Conv2dNormActivation)
    own = list(m.parameters(recurse=False))
    leaf = next(iter(m.children()), None) is None
    return "Norm" in type(m).__name__ and leaf and bool(own) and all(p.dim() < 2 for p in own)


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().double().square().mean().sqrt())


def _features(h: Harness) -> tuple[Feature, ...]:
    found = []
    for path, t in h.data_leaves():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        x = t.detach().double()
        found.append(
            Feature(
                where=describe(path),
                rms=_rms(x),
                mean=float(x.mean()),
                std=float(x.std()) if x.numel() > 1 else 0.0,
                min=float(x.min()),
                max=float(x.max()),
            )
        )
    return tuple(found)


def _first_layer(h: Harness) -> tuple[str, torch.nn.Module, float] | None:
    """Follow the float data through one forward pass (parameters frozen, data requiring a
    gradient) to the first non-root module that owns a weight or normalises and receives a
    tensor computed from the data; its name, module and the RMS of that tensor."""
    seen: list[tuple[str, torch.nn.Module, float]] = []

    def hook(name: str) -> Any:
        def before(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
            if seen:
                return
            for t in tensors_in((args, kwargs)):
                if t.is_floating_point() and t.requires_grad and t.numel():
                    seen.append((name, module, _rms(t)))
                    return

        return before

    candidates = [
        (n, m) for n, m in h.model.named_modules() if n and (owns_weight(m) or _is_norm(m))
    ]
    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in candidates]
    try:
        with preserved_module(h.model), autograd():
            for p in h.model.parameters():
                p.requires_grad_(False)
            # a clone of the leaf, so a forward that scales its input in place (x.div_(255))
            # works on a tensor autograd allows it to change
            inputs = h.map_data(
                lambda _, t: (
                    t.detach().clone().requires_grad_(True).clone() if t.is_floating_point() else t
                )
            )
            h.forward(inputs)
    except ValueError:
        seen.clear()
    finally:
        for handle in handles:
            handle.remove()
    if not seen:  # no layer reached through autograd, or a forward that cannot take inputs
        with torch.no_grad():  # requiring a gradient (x.numpy()): a plain call surfaces a
            h.forward()  # genuine misuse (wrong shapes) as its ValueError
        return None
    return seen[0]


def measure(h: Harness) -> InputScale:
    """The float features of ``h``'s batch and the scale its first layer receives (call inside
    ``h.isolated()``; eval mode keeps input dropout out of the measurement)."""
    features = _features(h)
    if not features:
        return InputScale(
            features=(), first_layer=None, first_layer_type=None, normalises=False, rms=None
        )
    first = _first_layer(h)
    if first is None:  # the data reaches no layer through autograd: judge the raw features
        worst = max(features, key=lambda f: abs(math.log(f.rms)) if f.rms > 0 else math.inf)
        return InputScale(
            features=features, first_layer=None, first_layer_type=None, normalises=False,
            rms=worst.rms,
        )  # fmt: skip
    name, module, rms = first
    normalises = _is_norm(module) and not owns_weight(module)
    return InputScale(
        features=features,
        first_layer=name,
        first_layer_type=type(module).__name__,
        normalises=normalises,
        rms=None if normalises else rms,
    )


def cause(scale: InputScale, low: float = MIN_RMS, high: float = MAX_RMS) -> Cause | None:
    """The inputs' scale as a likely cause, for a check whose failure it may explain."""
    if not scale.outside(low, high):
        return None
    assert scale.rms is not None
    where = f"'{scale.first_layer}'" if scale.first_layer else "the model"
    above = scale.rms > high
    return Cause(
        id="input_scale_high" if above else "input_scale_low",
        summary=f"the inputs reach {where} far {'above' if above else 'below'} unit scale"
        + (" (raw 0-255 pixels or unstandardised features?)" if above else
           " (scaled twice, e.g. divided by 255 after ToTensor?)"),
        remedy="normalise them; see nnsanity.assert_input_scale",
        evidence=(f"RMS {scale.rms:.3g} (unit scale: [{low:g}, {high:g}])",),
        where=scale.first_layer or None,
        support=CONSISTENT,
    )  # fmt: skip
