"""nnsanity: "A Recipe for Training Neural Networks" as assertions, and Nielsen ch. 5 as tests.

Every ``assert_*`` check raises :class:`SanityError` (an ``AssertionError``) with what it
measured, the bound, the likely causes and the argument that relaxes it; its ``measure_*`` twin
returns the same measurement as a result object without judging it.
"""

import importlib
from typing import TYPE_CHECKING, Any

from nnsanity.errors import SanityError

_LAZY = {  # public name -> module: checks import torch, so load them on first use
    "BatchIndependenceResult": "nnsanity.dependencies",
    "CausalResult": "nnsanity.causality",
    "FiniteResult": "nnsanity.finite",
    "GradientMonitor": "nnsanity.gradients",
    "GradientRatioResult": "nnsanity.gradients",
    "InitLossResult": "nnsanity.initialisation",
    "LayerGradient": "nnsanity.gradients",
    "LossDecreaseResult": "nnsanity.optimisation",
    "OverfitResult": "nnsanity.optimisation",
    "ParamsUpdateResult": "nnsanity.parameters",
    "ReproducibilityResult": "nnsanity.reproducibility",
    "UsesInputsResult": "nnsanity.baselines",
    "assert_batch_independence": "nnsanity.dependencies",
    "assert_can_overfit": "nnsanity.optimisation",
    "assert_causal": "nnsanity.causality",
    "assert_finite": "nnsanity.finite",
    "assert_gradient_ratio": "nnsanity.gradients",
    "assert_init_loss": "nnsanity.initialisation",
    "assert_loss_decreases": "nnsanity.optimisation",
    "assert_params_update": "nnsanity.parameters",
    "assert_reproducible": "nnsanity.reproducibility",
    "assert_uses_inputs": "nnsanity.baselines",
    "layer_gradient_norms": "nnsanity.gradients",
    "measure_batch_independence": "nnsanity.dependencies",
    "measure_causal": "nnsanity.causality",
    "measure_finite": "nnsanity.finite",
    "measure_gradient_ratio": "nnsanity.gradients",
    "measure_init_loss": "nnsanity.initialisation",
    "measure_loss_decrease": "nnsanity.optimisation",
    "measure_overfit": "nnsanity.optimisation",
    "measure_params_update": "nnsanity.parameters",
    "measure_reproducibility": "nnsanity.reproducibility",
    "measure_uses_inputs": "nnsanity.baselines",
    "seeded": "nnsanity.reproducibility",
}


def __getattr__(name: str) -> Any:
    # PEP 562: `import nnsanity` (and so loading the pytest plugin) does not import torch.
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nnsanity' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from nnsanity.baselines import UsesInputsResult, assert_uses_inputs, measure_uses_inputs
    from nnsanity.causality import CausalResult, assert_causal, measure_causal
    from nnsanity.dependencies import (
        BatchIndependenceResult,
        assert_batch_independence,
        measure_batch_independence,
    )
    from nnsanity.errors import SanityError
    from nnsanity.finite import FiniteResult, assert_finite, measure_finite
    from nnsanity.gradients import (
        GradientMonitor,
        GradientRatioResult,
        LayerGradient,
        assert_gradient_ratio,
        layer_gradient_norms,
        measure_gradient_ratio,
    )
    from nnsanity.initialisation import InitLossResult, assert_init_loss, measure_init_loss
    from nnsanity.optimisation import (
        LossDecreaseResult,
        OverfitResult,
        assert_can_overfit,
        assert_loss_decreases,
        measure_loss_decrease,
        measure_overfit,
    )
    from nnsanity.parameters import ParamsUpdateResult, assert_params_update, measure_params_update
    from nnsanity.reproducibility import (
        ReproducibilityResult,
        assert_reproducible,
        measure_reproducibility,
        seeded,
    )

__version__ = "0.1.0"

__all__ = [
    "BatchIndependenceResult",
    "CausalResult",
    "FiniteResult",
    "GradientMonitor",
    "GradientRatioResult",
    "InitLossResult",
    "LayerGradient",
    "LossDecreaseResult",
    "OverfitResult",
    "ParamsUpdateResult",
    "ReproducibilityResult",
    "SanityError",
    "UsesInputsResult",
    "__version__",
    "assert_batch_independence",
    "assert_can_overfit",
    "assert_causal",
    "assert_finite",
    "assert_gradient_ratio",
    "assert_init_loss",
    "assert_loss_decreases",
    "assert_params_update",
    "assert_reproducible",
    "assert_uses_inputs",
    "layer_gradient_norms",
    "measure_batch_independence",
    "measure_causal",
    "measure_finite",
    "measure_gradient_ratio",
    "measure_init_loss",
    "measure_loss_decrease",
    "measure_overfit",
    "measure_params_update",
    "measure_reproducibility",
    "measure_uses_inputs",
    "seeded",
]
