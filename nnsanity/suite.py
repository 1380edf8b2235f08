"""``SanitySuite``: every applicable check on one model, declared as one class.

Plain Python: the library never imports pytest. The pytest plugin (``nnsanity.plugin``)
collects each subclass named ``Test*`` as one test per selected check; without pytest,
``suite.run("can_overfit")`` runs one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from nnsanity.catalogue import BY_NAME, CATALOGUE, Check, Subject, get

if TYPE_CHECKING:
    import torch


class SanitySuite:
    """Subclass it in a test file, in a class named ``Test*``; pytest collects one test per check.

    Define ``model()`` and ``batch()``: factories, called afresh for every check, so no check
    sees another's training. Optionally:

    - ``loss_fn``: a loss (``loss_fn = F.cross_entropy``) or a method ``loss_fn(self, outputs,
      targets)``; None (the default) for a model that computes its own loss from a mapping
      batch with its labels inside;
    - ``optimizer``, ``step``, ``step_factory``: the checks' ``optimizer=`` (a factory of the
      parameters), ``step=`` (your training step) or ``step_factory=`` (``step_factory(model)
      -> step``: your step for the check's fresh model, with its own optimizer), as values or
      methods of those names;
    - ``holdout()``: a second batch of the same distribution (for ``learns_signal``);
    - ``padding``: the checks' ``padding=`` (a bool mask or the pad id) where the batch does
      not mark its padding itself;
    - ``autoregressive``: True for a causal model the checks cannot recognise (a Hugging Face
      model says so itself); ``inputs(batch)``: its sequence inputs, where they are not the
      batch's inputs;
    - ``checks``: ``"all"`` (the default) or a list of names (``nnsanity.catalogue``);
    - ``skip``: ``{"check": "reason"}``, shown as the skip's reason;
    - ``options``: ``{"check": {"argument": value}}``, passed to that check (a bound relaxed).

    A check that does not apply (causality for a model that is not autoregressive, the padding
    checks for a batch without padding, ``learns_signal`` without a holdout) is skipped, with
    the reason.
    """

    checks: ClassVar[str | Sequence[str]] = "all"
    skip: ClassVar[Mapping[str, str]] = {}
    options: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    loss_fn: Any = None
    optimizer: Any = None
    step: Any = None
    step_factory: Any = None
    padding: Any = None
    autoregressive: ClassVar[bool | None] = None

    def model(self) -> torch.nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must define model(), a factory")

    def batch(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define batch(), a factory")

    def holdout(self) -> Any:
        return None

    def inputs(self, batch: Any) -> Any:
        return None

    @classmethod
    def selected(cls) -> tuple[Check, ...]:
        """The checks this suite asks for, in the catalogue's order; a ValueError for a name
        that is not a check (in ``checks``, ``skip`` or ``options``)."""
        where = f"{cls.__name__}.checks"
        if isinstance(cls.checks, str):
            if cls.checks != "all":
                raise ValueError(f'{where} must be "all" or a list of names, got {cls.checks!r}')
            chosen = set(BY_NAME)
        else:
            chosen = {get(name).name for name in cls.checks}
        for attribute in ("skip", "options"):
            for name in getattr(cls, attribute):
                get(name)  # the ValueError names the checks
        return tuple(c for c in CATALOGUE if c.name in chosen)

    def _value(self, name: str) -> Any:
        """``loss_fn``, ``optimizer``, ``step``, ``step_factory``: a method of that name bound to
        the suite, else the value itself (``loss_fn = F.cross_entropy`` must not be bound)."""
        raw = inspect.getattr_static(self, name)
        if isinstance(raw, staticmethod):
            return raw.__func__
        if inspect.isfunction(raw) and raw.__name__ == name:
            return getattr(self, name)
        return raw

    def subject(self) -> Subject:
        """A fresh model and batch, with everything the suite says about them."""
        batch = self.batch()
        return Subject(
            model=self.model(),
            batch=batch,
            loss_fn=self._value("loss_fn"),
            optimizer=self._value("optimizer"),
            step=self._value("step"),
            step_factory=self._value("step_factory"),
            holdout=self.holdout(),
            padding=self.padding,
            inputs=self.inputs(batch),
            autoregressive=self.autoregressive,
        )

    def prepare(self, name: str) -> Callable[[int], Any]:
        """``assert_<name>`` on a fresh subject, ready to run with a seed; NotApplicable when
        the check does not apply (or the suite skips it), with the reason."""
        check = get(name)
        if name in self.skip:
            raise NotApplicable(self.skip[name])
        subject = self.subject()
        reason = check.applies(subject)
        if reason is not None:
            raise NotApplicable(reason)
        options = self.options.get(name, {})

        def run(seed: int) -> Any:
            __tracebackhide__ = True
            return check.check(subject, seed=seed, **options)

        return run

    def run(self, name: str, *, seed: int = 0) -> Any:
        """Run ``assert_<name>`` on a fresh subject: its result, :class:`SanityError` when it
        fails, :class:`NotApplicable` when it does not apply."""
        __tracebackhide__ = True
        return self.prepare(name)(seed)


class NotApplicable(Exception):
    """The check does not apply to this suite's model and batch; the message says why."""
