"""nnsanity: Karpathy's "A Recipe for Training Neural Networks" as assertions.

Every ``assert_*`` check is its ``measure_*`` twin plus a raise: the twin returns a frozen
result with ``.passed`` and the bound it was judged against, and the assert raises
:class:`SanityError` (an ``AssertionError``) with what it measured, the bound, the likely
causes and the argument that relaxes it. The checks live in ``nnsanity.checks``, one module per
property; the reproduction engine for Nielsen ch. 5 is the separate ``nnsanity.repro``.
"""

import importlib
from typing import TYPE_CHECKING, Any

from nnsanity._version import __version__ as __version__
from nnsanity.catalogue import public_names
from nnsanity.errors import SanityError as SanityError

# Public name -> module: every check's from the catalogue (nnsanity/catalogue.py, the one list
# of checks), then the rest. Checks import torch, so they load on first use (PEP 562) and
# `import nnsanity` stays cheap for the pytest plugin.
_LAZY = {
    **public_names(),
    "Cause": "nnsanity._diagnosis",
    "Operation": "nnsanity._diagnosis",
    "Place": "nnsanity._diagnosis",
    "StepForensics": "nnsanity._forensics",
    "GradientMonitor": "nnsanity.gradient_norms",
    "TrainingMonitor": "nnsanity.monitor",
    "Alert": "nnsanity.monitor",
    "LayerGradient": "nnsanity.gradient_norms",
    "layer_gradient_norms": "nnsanity.gradient_norms",
    "seeded": "nnsanity.seeding",
    "SanitySuite": "nnsanity.suite",
}

__all__ = sorted([*_LAZY, "SanityError", "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nnsanity' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # explicit re-exports for type checkers; tests/test_api.py keeps them = _LAZY
    from nnsanity._diagnosis import Cause as Cause
    from nnsanity._diagnosis import Operation as Operation
    from nnsanity._diagnosis import Place as Place
    from nnsanity._forensics import StepForensics as StepForensics
    from nnsanity.checks.activation_growth import ActivationGrowthResult as ActivationGrowthResult
    from nnsanity.checks.activation_growth import (
        assert_activation_growth as assert_activation_growth,
    )
    from nnsanity.checks.activation_growth import (
        measure_activation_growth as measure_activation_growth,
    )
    from nnsanity.checks.batch_independence import (
        BatchIndependenceResult as BatchIndependenceResult,
    )
    from nnsanity.checks.batch_independence import (
        assert_batch_independence as assert_batch_independence,
    )
    from nnsanity.checks.batch_independence import (
        measure_batch_independence as measure_batch_independence,
    )
    from nnsanity.checks.causal import CausalResult as CausalResult
    from nnsanity.checks.causal import assert_causal as assert_causal
    from nnsanity.checks.causal import measure_causal as measure_causal
    from nnsanity.checks.dying_units import DyingUnitsResult as DyingUnitsResult
    from nnsanity.checks.dying_units import assert_no_dying_units as assert_no_dying_units
    from nnsanity.checks.dying_units import measure_dying_units as measure_dying_units
    from nnsanity.checks.eval_mode import EvalModeResult as EvalModeResult
    from nnsanity.checks.eval_mode import assert_eval_mode as assert_eval_mode
    from nnsanity.checks.eval_mode import measure_eval_mode as measure_eval_mode
    from nnsanity.checks.finite import FiniteResult as FiniteResult
    from nnsanity.checks.finite import assert_finite as assert_finite
    from nnsanity.checks.finite import measure_finite as measure_finite
    from nnsanity.checks.gradient_ratio import GradientRatioResult as GradientRatioResult
    from nnsanity.checks.gradient_ratio import assert_gradient_ratio as assert_gradient_ratio
    from nnsanity.checks.gradient_ratio import measure_gradient_ratio as measure_gradient_ratio
    from nnsanity.checks.init_loss import InitLossResult as InitLossResult
    from nnsanity.checks.init_loss import assert_init_loss as assert_init_loss
    from nnsanity.checks.init_loss import measure_init_loss as measure_init_loss
    from nnsanity.checks.input_scale import InputScaleResult as InputScaleResult
    from nnsanity.checks.input_scale import assert_input_scale as assert_input_scale
    from nnsanity.checks.input_scale import measure_input_scale as measure_input_scale
    from nnsanity.checks.learns_signal import LearnsSignalResult as LearnsSignalResult
    from nnsanity.checks.learns_signal import assert_learns_signal as assert_learns_signal
    from nnsanity.checks.learns_signal import measure_learns_signal as measure_learns_signal
    from nnsanity.checks.loss_decrease import LossDecreaseResult as LossDecreaseResult
    from nnsanity.checks.loss_decrease import assert_loss_decreases as assert_loss_decreases
    from nnsanity.checks.loss_decrease import measure_loss_decrease as measure_loss_decrease
    from nnsanity.checks.loss_masking import LossMaskingResult as LossMaskingResult
    from nnsanity.checks.loss_masking import assert_loss_masks_padding as assert_loss_masks_padding
    from nnsanity.checks.loss_masking import measure_loss_masking as measure_loss_masking
    from nnsanity.checks.loss_stability import LossStabilityResult as LossStabilityResult
    from nnsanity.checks.loss_stability import assert_loss_stable as assert_loss_stable
    from nnsanity.checks.loss_stability import measure_loss_stability as measure_loss_stability
    from nnsanity.checks.order_sensitivity import (
        OrderSensitivityResult as OrderSensitivityResult,
    )
    from nnsanity.checks.order_sensitivity import assert_uses_order as assert_uses_order
    from nnsanity.checks.order_sensitivity import (
        measure_order_sensitivity as measure_order_sensitivity,
    )
    from nnsanity.checks.overfit import OverfitResult as OverfitResult
    from nnsanity.checks.overfit import assert_can_overfit as assert_can_overfit
    from nnsanity.checks.overfit import measure_overfit as measure_overfit
    from nnsanity.checks.padding_invariance import (
        PaddingInvarianceResult as PaddingInvarianceResult,
    )
    from nnsanity.checks.padding_invariance import assert_ignores_padding as assert_ignores_padding
    from nnsanity.checks.padding_invariance import (
        measure_padding_invariance as measure_padding_invariance,
    )
    from nnsanity.checks.params_registered import (
        ParamsRegisteredResult as ParamsRegisteredResult,
    )
    from nnsanity.checks.params_registered import (
        assert_params_registered as assert_params_registered,
    )
    from nnsanity.checks.params_registered import (
        measure_params_registered as measure_params_registered,
    )
    from nnsanity.checks.params_update import ParamsUpdateResult as ParamsUpdateResult
    from nnsanity.checks.params_update import assert_params_update as assert_params_update
    from nnsanity.checks.params_update import measure_params_update as measure_params_update
    from nnsanity.checks.reproducible import ReproducibilityResult as ReproducibilityResult
    from nnsanity.checks.reproducible import assert_reproducible as assert_reproducible
    from nnsanity.checks.reproducible import measure_reproducibility as measure_reproducibility
    from nnsanity.checks.target_leak import TargetLeakResult as TargetLeakResult
    from nnsanity.checks.target_leak import assert_no_target_leak as assert_no_target_leak
    from nnsanity.checks.target_leak import measure_target_leak as measure_target_leak
    from nnsanity.checks.update_ratio import UpdateRatioResult as UpdateRatioResult
    from nnsanity.checks.update_ratio import assert_update_ratio as assert_update_ratio
    from nnsanity.checks.update_ratio import measure_update_ratio as measure_update_ratio
    from nnsanity.checks.uses_inputs import UsesInputsResult as UsesInputsResult
    from nnsanity.checks.uses_inputs import assert_uses_inputs as assert_uses_inputs
    from nnsanity.checks.uses_inputs import measure_uses_inputs as measure_uses_inputs
    from nnsanity.gradient_norms import GradientMonitor as GradientMonitor
    from nnsanity.gradient_norms import LayerGradient as LayerGradient
    from nnsanity.gradient_norms import layer_gradient_norms as layer_gradient_norms
    from nnsanity.monitor import Alert as Alert
    from nnsanity.monitor import TrainingMonitor as TrainingMonitor
    from nnsanity.seeding import seeded as seeded
    from nnsanity.suite import SanitySuite as SanitySuite
