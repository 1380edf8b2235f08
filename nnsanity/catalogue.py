"""The one list of checks: every check's name, functions, category, needs and when it applies.

The public API (``nnsanity.__init__``), :class:`nnsanity.SanitySuite`, the pytest plugin, the
install test, the README table's test and the compatibility zoo all read :data:`CATALOGUE`, so
adding a check is one :class:`Check` entry here (and its module, tests and README row).

Importing this module imports no torch: the functions and result types load on first use, and
the predicates import what they need when they run.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Category = Literal["init", "wiring", "one step", "short run", "experiment"]
# The README's heading for each category, in the README's order.
CATEGORIES: dict[Category, str] = {
    "init": "At initialisation",
    "wiring": "Wiring",
    "one step": "One training step",
    "short run": "A short training run",
    "experiment": "Your experiment",
}
# loss: a loss_fn, or a model that computes its own loss (from a mapping batch's labels, or
# a forward that takes the targets). holdout: a second batch of the same distribution.
# padding: padded positions in the batch, or the suite's padding=. step: the check trains,
# with the suite's optimizer and step when it has them. sequence: an autoregressive model.
Need = Literal["loss", "holdout", "padding", "step", "sequence", "per_position"]


@dataclasses.dataclass(frozen=True)
class Subject:
    """What a check is run on: the model and batch, and what the suite says about them.

    ``optimizer``, ``step`` and ``step_factory`` are the checks' arguments of those names;
    ``padding`` their
    ``padding=``; ``inputs`` the causality check's sequence inputs (None: the batch's inputs,
    its labels dropped); ``autoregressive`` None means "find out from the model".
    """

    model: torch.nn.Module
    batch: Any
    loss_fn: Callable[[Any, Any], Any] | None = None
    optimizer: Callable[..., Any] | None = None
    step: Callable[[Any], Any] | None = None
    step_factory: Callable[[Any], Any] | None = None
    holdout: Any = None
    padding: Any = None
    inputs: Any = None
    autoregressive: bool | None = None


Arguments = tuple[tuple[Any, ...], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Check:
    """One check: ``assert_<name>`` and its ``measure`` twin in ``module``, and what it needs.

    ``applies(subject)`` returns None when the check applies, else the reason it does not;
    ``arguments(subject)`` the positional and keyword arguments that call it on the subject
    with every bound at its default.
    """

    name: str
    module: str
    measure_name: str
    result_name: str
    category: Category
    needs: frozenset[Need] = frozenset()
    # the arguments, where the generic rule (model, batch, the loss if the check takes one, and
    # whichever of the suite's optimizer, step, step_factory, holdout and padding it takes) does
    # not fit
    custom_arguments: Callable[[Subject], Arguments] | None = None

    @property
    def assert_name(self) -> str:
        return f"assert_{self.name}"

    def _load(self, name: str) -> Any:
        return getattr(importlib.import_module(self.module), name)

    @property
    def assert_fn(self) -> Callable[..., Any]:
        return self._load(self.assert_name)  # type: ignore[no-any-return]

    @property
    def measure_fn(self) -> Callable[..., Any]:
        return self._load(self.measure_name)  # type: ignore[no-any-return]

    @property
    def result_type(self) -> type:
        return self._load(self.result_name)  # type: ignore[no-any-return]

    def applies(self, subject: Subject) -> str | None:
        """None when the check applies to ``subject``, else why not (one sentence)."""
        for need in sorted(self.needs):
            reason = _PREDICATES[need](subject) if need in _PREDICATES else None
            if reason is not None:
                return f"{self.name} needs {reason}"
        return None

    def arguments(self, subject: Subject) -> Arguments:
        if self.custom_arguments is not None:
            return self.custom_arguments(subject)
        params = inspect.signature(self.measure_fn).parameters
        args: tuple[Any, ...] = (subject.model, subject.batch)
        if "loss_fn" in params:
            args += (subject.loss_fn,)
        kwargs = {
            name: getattr(subject, name)
            for name in ("optimizer", "step", "step_factory", "holdout", "padding")
            if name in params and getattr(subject, name) is not None
        }
        return args, kwargs

    def measure(self, subject: Subject, **overrides: Any) -> Any:
        """``measure_<...>`` on the subject (``overrides``: bounds and options by name)."""
        args, kwargs = self.arguments(subject)
        return self.measure_fn(*args, **{**kwargs, **overrides})

    def check(self, subject: Subject, **overrides: Any) -> Any:
        """``assert_<name>`` on the subject: the result, or :class:`SanityError`."""
        __tracebackhide__ = True
        args, kwargs = self.arguments(subject)
        return self.assert_fn(*args, **{**kwargs, **overrides})


# -- what each need asks of the subject -------------------------------------------------------


def _needs_loss(s: Subject) -> str | None:
    """Without loss_fn, the model must compute its own loss: the harness's own rule decides
    (a mapping batch with its labels, a forward that takes the targets, ...)."""
    from nnsanity._harness import Harness

    if s.loss_fn is not None:
        return None
    try:
        Harness(s.model, s.batch, None, seed=0)
    except (TypeError, ValueError) as e:
        return f"a loss: set loss_fn (e.g. loss_fn = F.cross_entropy); {e}"
    return None


def _needs_holdout(s: Subject) -> str | None:
    if s.holdout is not None:
        return None
    return "a holdout: define holdout() to return a second batch of the same distribution"


def _needs_padding(s: Subject) -> str | None:
    from nnsanity._harness import Harness
    from nnsanity._padding import check_padding, find_padding

    try:
        h = Harness(s.model, s.batch, s.loss_fn, seed=0, needs_loss=False)
        with h.isolated(train=False):
            find_padding(h, check_padding(s.padding), readers=False)
    except (TypeError, ValueError) as e:
        return f"padded positions in the batch: {e}"
    return None


def _needs_per_position(s: Subject) -> str | None:
    """A loss over padded positions needs a prediction per position: a sequence classifier's
    (B, C) output has no padded targets to mask."""
    import torch

    from nnsanity._harness import Harness
    from nnsanity._padding import check_padding, find_padding, position_dim, target_padding

    try:
        h = Harness(s.model, s.batch, s.loss_fn, seed=0)
        with h.isolated(train=False), torch.no_grad():
            pad = target_padding(h, check_padding(s.padding)) or find_padding(
                h, check_padding(s.padding), readers=False
            )
            shape = h.logits(h.forward()).shape
    except (TypeError, ValueError):
        return None  # the check itself says what is wrong
    if position_dim(shape, *pad.shape) is None:
        return (
            f"a prediction per position: the output judged has shape {tuple(shape)}, with no "
            f"position dim of the padding's {tuple(pad.shape)} (a sequence classifier's loss "
            "has no padded targets)"
        )
    return None


def autoregressive(model: Any) -> bool | None:
    """True for a Hugging Face decoder-only language model, False for another Hugging Face
    model, None when the model does not say (a plain ``nn.Module``)."""
    config = getattr(model, "config", None)
    can_generate = getattr(model, "can_generate", None)
    if config is None or not callable(can_generate):
        return None
    return bool(can_generate()) and not getattr(config, "is_encoder_decoder", False)


def _needs_sequence(s: Subject) -> str | None:
    known = s.autoregressive if s.autoregressive is not None else autoregressive(s.model)
    if known:
        return None
    if known is False:
        return "an autoregressive model: this one's outputs may read every position"
    return (
        f"an autoregressive model, and {type(s.model).__name__} does not say it is one: set "
        "autoregressive = True in the suite (and inputs() if its inputs are not the batch's)"
    )


_PREDICATES: dict[Need, Callable[[Subject], str | None]] = {
    "loss": _needs_loss,
    "holdout": _needs_holdout,
    "padding": _needs_padding,
    "sequence": _needs_sequence,
    "per_position": _needs_per_position,
}


def sequence_inputs(batch: Any) -> Any:
    """A batch's inputs without its labels: a mapping less its label keys, a pair's first."""
    from nnsanity._structures import LABEL_KEYS

    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k not in LABEL_KEYS}
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0]
    return batch


def _causal_arguments(s: Subject) -> Arguments:
    inputs = sequence_inputs(s.batch) if s.inputs is None else s.inputs
    return (s.model, inputs), {}


def _reproducible_arguments(s: Subject) -> Arguments:
    """The model's forward in train mode (dropout on: it draws random numbers where it has
    any), the batch's labels passed where the forward takes them."""
    import torch

    from nnsanity._harness import Harness

    h = Harness(s.model, s.batch, s.loss_fn, seed=0, needs_loss=False)

    def forward() -> Any:
        was = s.model.training
        s.model.train()
        try:
            with torch.no_grad():
                return h.forward()
        finally:
            s.model.train(was)

    return (forward,), {}


def _check(name: str, measured: str, category: Category, *needs: Need, **kw: Any) -> Check:
    """A row: ``assert_<name>``, ``measure_<measured>`` and ``<Measured>Result``, in the module
    ``checks/<measured>.py`` unless ``module=`` says otherwise."""
    module = kw.pop("module", measured)
    result = "".join(part.title() for part in measured.split("_")) + "Result"
    return Check(
        name, f"nnsanity.checks.{module}", f"measure_{measured}", result, category,
        frozenset(needs), **kw,
    )  # fmt: skip


# In the README table's order. A new check: one row here.
CATALOGUE: tuple[Check, ...] = (
    _check("init_loss", "init_loss", "init", "loss"),
    _check("input_scale", "input_scale", "init"),
    _check("activation_growth", "activation_growth", "init"),
    _check("gradient_ratio", "gradient_ratio", "init", "loss"),
    _check("finite", "finite", "init", "loss"),
    _check("batch_independence", "batch_independence", "wiring"),
    _check("causal", "causal", "wiring", "sequence", custom_arguments=_causal_arguments),
    _check("no_target_leak", "target_leak", "wiring", "loss"),
    _check(
        "uses_order", "order_sensitivity", "wiring", "sequence", custom_arguments=_causal_arguments
    ),
    _check("ignores_padding", "padding_invariance", "wiring", "padding"),
    _check("loss_masks_padding", "loss_masking", "wiring", "loss", "padding", "per_position"),
    _check("eval_mode", "eval_mode", "wiring"),
    _check("params_registered", "params_registered", "wiring", "loss", "step"),
    _check("params_update", "params_update", "one step", "loss", "step"),
    _check("update_ratio", "update_ratio", "one step", "loss", "step"),
    _check("no_dying_units", "dying_units", "one step", "loss", "step"),
    _check("loss_decreases", "loss_decrease", "short run", "loss", "step"),
    _check("loss_stable", "loss_stability", "short run", "loss", "step"),
    _check("can_overfit", "overfit", "short run", "loss", "step"),
    _check("uses_inputs", "uses_inputs", "short run", "loss", "step"),
    _check("learns_signal", "learns_signal", "short run", "loss", "holdout", "step"),
    _check(
        "reproducible",
        "reproducibility",
        "experiment",
        module="reproducible",
        custom_arguments=_reproducible_arguments,
    ),
)

BY_NAME: dict[str, Check] = {c.name: c for c in CATALOGUE}


def get(name: str) -> Check:
    """The check called ``name`` (``assert_<name>``); a ValueError lists the names."""
    if name not in BY_NAME:
        raise ValueError(f"no check is called {name!r}; the checks are {sorted(BY_NAME)}")
    return BY_NAME[name]


def public_names() -> dict[str, str]:
    """Public name -> module, for every check's assert, measure and result type."""
    return {n: c.module for c in CATALOGUE for n in (c.assert_name, c.measure_name, c.result_name)}
