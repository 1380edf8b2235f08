"""Every tensor that trains is one the optimizer can see: registered, and held by the optimizer.

An optimizer updates the tensors it was given, usually ``model.parameters()``, which lists only
what ``nn.Module`` registered: ``nn.Parameter`` and ``nn.Module`` attributes. A layer kept in a
plain Python list, a tensor attribute that is not an ``nn.Parameter``, a parameter re-created in
every forward, or a layer replaced after the optimizer was built all reach the loss and get
gradients, yet are never updated; the rest of the network trains and the loss still falls. The
check walks the loss's autograd graph (``loss.grad_fn``, ``next_functions``) to every leaf that
will receive a gradient (``AccumulateGrad.variable``) and compares them with the model's
parameters and, where it can be known, the optimizer's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from nnsanity._arguments import (
    LossFn,
    OptimizerFactory,
    Step,
    StepFactory,
    resolve_step,
)
from nnsanity._diagnosis import CONSISTENT, CONTRADICTED, MEASURED, Cause
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail, names
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import autograd
from nnsanity._structures import tensors_in

_INTERNAL = frozenset(vars(torch.nn.Module()))  # nn.Module's own bookkeeping attributes
_SCAN_DEPTH = 3  # containers inside containers: self.blocks = [[conv, bn], ...]


@dataclass(frozen=True, kw_only=True)
class ParamsRegisteredResult(CheckResult):
    """The leaves of the loss's graph that no optimizer of ``model.parameters()`` can update.

    ``unregistered`` pairs each such tensor's name (its attribute path, or its shape when no
    attribute holds it) with how it is held: ``"container"`` (a plain list, tuple or dict),
    ``"attribute"`` (a plain tensor attribute), ``"buffer"`` or ``"forward"`` (created in
    forward, held by nothing).
    """

    reached: int  # leaf tensors that require grad and reach the loss
    n_params: int  # parameters of the model (and of loss_fn, if it is a module)
    unregistered: tuple[tuple[str, str], ...]  # (name, how it is held)
    recreated: tuple[str, ...]  # parameters that are new objects after a forward
    optimizer: str | None  # the optimizer compared with; None when none could be known
    not_in_optimizer: tuple[str, ...]  # parameters reaching the loss that the optimizer lacks
    stale_in_optimizer: tuple[str, ...]  # shapes of tensors it holds that are no parameter
    loss: float

    @property
    def problems(self) -> tuple[str, ...]:
        """The problems found, most specific first (the first is the one reported)."""
        return tuple(
            p for p in ("recreated", "unregistered", "not_in_optimizer") if getattr(self, p)
        )

    @property
    def passed(self) -> bool:
        return not self.problems


class _Caught(BaseException):
    """Stops the user's step at its optimizer's step (BaseException: a broad ``except
    Exception`` in the step must not swallow it)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self.optimizer = optimizer


def _step_optimizer(h: Harness) -> torch.optim.Optimizer | None:
    """The optimizer the user's step calls, caught before it updates anything (so neither the
    parameters nor the optimizer's state change); None when the step calls none."""
    assert h.step is not None

    def stop(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        raise _Caught(optimizer)

    handle = register_optimizer_step_pre_hook(stop)
    try:
        with autograd():
            h.step(h.user_batch())
    except _Caught as caught:
        return caught.optimizer
    finally:
        handle.remove()
    return None


@contextmanager
def _kept_identities(model: torch.nn.Module) -> Iterator[None]:
    """Give every module back the very objects it held (parameters, buffers, submodules, plain
    attributes): a forward that re-creates a parameter or a layer swaps them, and the values
    ``Harness.isolated`` restores by name would land in the new objects."""
    saved = [
        (m, dict(vars(m)), dict(m._parameters), dict(m._buffers), dict(m._modules))
        for m in model.modules()
    ]
    try:
        yield
    finally:
        for m, attrs, params, buffers, modules in saved:
            for key in [k for k in vars(m) if k not in attrs]:
                del m.__dict__[key]
            m.__dict__.update(attrs)
            for now, then in (
                (m._parameters, params),
                (m._buffers, buffers),
                (m._modules, modules),
            ):
                now.clear()
                now.update(then)  # type: ignore[arg-type]


def _leaves(loss: torch.Tensor) -> list[torch.Tensor]:
    """The leaves that require grad in ``loss``'s graph, in the order first reached."""
    found: dict[int, torch.Tensor] = {}
    seen: set[Any] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):  # AccumulateGrad: a leaf's gradient sink
            found.setdefault(id(variable), variable)
        stack.extend(n for n, _ in node.next_functions)
    return list(found.values())


def _held(value: Any, path: str, depth: int) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Tensors inside a plain attribute value: (name, how held, tensor)."""
    if isinstance(value, torch.nn.Module):
        for n, p in value.named_parameters():
            yield f"{path}.{n}", "container", p
    elif isinstance(value, torch.Tensor):
        yield path, "attribute", value
    elif depth < _SCAN_DEPTH and isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            for name, _, t in _held(v, f"{path}[{i}]", depth + 1):
                yield name, "container", t
    elif depth < _SCAN_DEPTH and isinstance(value, dict):
        for k, v in value.items():
            for name, _, t in _held(v, f"{path}[{k!r}]", depth + 1):
                yield name, "container", t


def _where_held(model: torch.nn.Module, loss_fn: Any) -> dict[int, tuple[str, str]]:
    """Every tensor a plain attribute of the model (or of loss_fn) holds, and the model's
    buffers, by id: (name, how held)."""
    found: dict[int, tuple[str, str]] = {}
    owners: list[tuple[str, Any]] = [(n, m) for n, m in model.named_modules()]
    if loss_fn is not None and hasattr(loss_fn, "__dict__"):
        owners.append(("loss_fn", loss_fn))
    for prefix, owner in owners:
        for attr, value in vars(owner).items():
            if attr in _INTERNAL and isinstance(owner, torch.nn.Module):
                continue
            path = f"{prefix}.{attr}" if prefix else attr
            for name, how, t in _held(value, path, 0):
                found.setdefault(id(t), (name, how))
    for name, b in model.named_buffers():
        found.setdefault(id(b), (name, "buffer"))
    return found


def _named_params(model: torch.nn.Module, loss_fn: Any) -> dict[int, str]:
    params = {id(p): n for n, p in model.named_parameters()}
    if isinstance(loss_fn, torch.nn.Module):
        params |= {id(p): f"loss_fn.{n}" for n, p in loss_fn.named_parameters()}
    return params


def _of_inputs(t: torch.Tensor, batch: list[torch.Tensor]) -> bool:
    """``t`` is one of the batch's tensors, or a view or copy of one: wav2vec2 sets
    ``requires_grad=True`` on ``input_values[:, None]`` for gradient checkpointing. Gradients
    with respect to the data are no parameter a model should register."""
    for x in batch:
        ptr = x.untyped_storage().data_ptr()
        if t is x or (ptr != 0 and t.untyped_storage().data_ptr() == ptr):
            return True
        same = t.numel() == x.numel() and t.dtype == x.dtype and t.device == x.device
        if same and torch.equal(t.detach().reshape(-1), x.detach().reshape(-1)):
            return True
    return False


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def measure_params_registered(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    unpack: bool | None = None,
    seed: int = 0,
) -> ParamsRegisteredResult:
    """Walk the loss's graph to its leaves and compare them; see the assert."""
    step = resolve_step(model, optimizer, step, step_factory)
    h = Harness(model, batch, loss_fn, seed=seed, optimizer=optimizer, step=step, unpack=unpack)
    with h.isolated(train=True), _kept_identities(h.model):
        before = _named_params(h.model, loss_fn)
        with autograd():
            loss = h.graph_loss(h.forward())
        after = _named_params(h.model, loss_fn)
        batch = tensors_in((h.inputs, h.targets))
        leaves = [t for t in _leaves(loss) if not _of_inputs(t, batch)]
        held = _where_held(h.model, loss_fn)
        opt: torch.optim.Optimizer | None = None
        described = None
        if step is not None:
            opt = _step_optimizer(h)
            described = f"{type(opt).__name__} (called by your step)" if opt else None
        elif optimizer is not None:
            opt = optimizer([p for p in h.model.parameters() if p.requires_grad])
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(
                    "optimizer must be a factory params -> torch.optim.Optimizer, e.g. "
                    f"lambda p: torch.optim.SGD(p, lr=0.1); got one returning {type(opt).__name__}."
                )
            described = f"{type(opt).__name__} (from optimizer=)"
    unregistered, recreated, ours = [], [], []
    for t in leaves:
        if id(t) in before:
            ours.append((before[id(t)], t))
        elif id(t) in after:
            recreated.append(after[id(t)])
        else:
            unregistered.append(held.get(id(t), (_shape(t), "forward")))
    order = {key: i for i, key in enumerate(held.values())}  # the attributes' own order
    unregistered.sort(key=lambda u: (list(_HOW).index(u[1]), order.get(u, len(order))))
    not_in, stale = [], []
    if opt is not None:
        holds = {id(p) for group in opt.param_groups for p in group["params"]}
        not_in = [name for name, t in ours if id(t) not in holds]
        every = set(before) | set(after)
        stale = [
            _shape(p) for group in opt.param_groups for p in group["params"] if id(p) not in every
        ]
    r = ParamsRegisteredResult(
        seed=h.seed,
        reached=len(leaves),
        n_params=len(before),
        unregistered=tuple(unregistered),
        recreated=tuple(recreated),
        optimizer=described,
        not_in_optimizer=tuple(not_in),
        stale_in_optimizer=tuple(stale),
        loss=float(loss.detach()),
    )
    return diagnosed(r, _diagnose)


def assert_params_registered(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> ParamsRegisteredResult:
    """Assert that every tensor that gets a gradient from the loss is one the optimizer updates.

    One train-mode forward builds the loss's autograd graph; every leaf that requires grad and
    reaches the loss (the ``AccumulateGrad`` nodes' ``variable``, the batch's own tensors left
    out) must be a parameter of the model (or of ``loss_fn``, when it is an ``nn.Module``) that
    existed before the forward. A leaf held by a plain list, tuple or dict attribute (a layer in
    a Python list), by a plain tensor attribute, by a buffer, or by nothing (created in forward)
    is named with its attribute path; a parameter that is a new object after the forward
    (``nn.Parameter`` or a layer created in forward) is named too.

    With ``step=`` (your training step), the step is run until it calls an optimizer's
    ``step()``, which is stopped before it updates anything, and that optimizer's param groups
    must hold every parameter that reaches the loss: a layer replaced after the optimizer was
    built is named, with the stale tensors the optimizer holds instead. With ``optimizer=`` (a
    factory) the optimizer it builds from ``model.parameters()`` is compared. With neither, the
    optimizer is assumed to be built from ``model.parameters()``.

    No tolerance: a tensor is in a set or it is not (a healthy model has 0 such tensors; 0 on
    every model of the zoo and of the real-architecture zoo).

    Proves: on this batch, the optimizer can update every tensor that receives a gradient.
    Does not prove: that it does (zero gradients, a learning rate of 0: ``assert_params_update``),
    nor anything about parameters that do not reach the loss. Tensors used inside a
    ``torch.utils.checkpoint`` with ``use_reentrant=True`` are not in the graph until backward
    and go unchecked. With ``step=``, only the first optimizer the step calls is compared.

    ``step_factory(model) -> step`` builds your step afresh for this check (with its own
    optimizer: no state carried over from another check); pass it or ``step``, not both.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_params_registered(
        model,
        batch,
        loss_fn,
        optimizer=optimizer,
        step=step,
        step_factory=step_factory,
        unpack=unpack,
        seed=seed,
    )
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


# How an unregistered tensor is held: (the line that lists them, the cause with its remedy).
_HOW = {
    "container": (
        "Reach the loss, held in a plain list, tuple or dict",
        Cause(
            id="plain_container",
            summary="kept in a plain Python list, tuple or dict, which nn.Module does not register",
            remedy="use nn.ModuleList / nn.ModuleDict (nn.ParameterList / nn.ParameterDict for "
            "tensors)",
        ),
    ),
    "attribute": (
        "Reach the loss, plain tensor attributes",
        Cause(
            id="plain_tensor_attribute",
            summary="a plain tensor attribute with requires_grad=True",
            remedy="wrap it in nn.Parameter (register_buffer if it must not train)",
        ),
    ),
    "buffer": (
        "Reach the loss, buffers that require grad",
        Cause(
            id="buffer_requires_grad",
            summary="registered as a buffer, which no optimizer of model.parameters() holds",
            remedy="make it an nn.Parameter",
        ),
    ),
    "forward": (
        "Reach the loss, created in forward and held by no attribute (shapes)",
        Cause(
            id="leaf_created_in_forward",
            summary="created in forward with requires_grad=True (torch.zeros(..., "
            "requires_grad=True)): a new leaf every call that no optimizer holds",
            remedy="create it once in __init__ as nn.Parameter",
        ),
    ),
}
_RECREATED = Cause(
    id="parameter_created_in_forward",
    summary="created in forward (self.w = nn.Parameter(...) or a layer built in forward): a new "
    "object every call, so an optimizer built before holds the first one and every forward starts "
    "from a fresh initialisation",
    remedy="create it in __init__",
)
_REPLACED = Cause(
    id="layer_replaced_after_optimizer",
    summary="a layer replaced after the optimizer was built (a new head, a pruned or converted "
    "layer): the optimizer still holds the old one's tensors",
    remedy="build the optimizer after the replacement, or add the new parameters with "
    "optimizer.add_param_group",
)
_SUBSET = Cause(
    id="optimizer_subset",
    summary="the optimizer was built from a subset of the parameters (a name filter, or "
    "requires_grad read before unfreezing)",
    remedy="build it from model.parameters()",
)


def _diagnose(r: ParamsRegisteredResult) -> list[Cause]:
    causes = []
    if r.recreated:
        causes.append(
            replace(
                _RECREATED,
                where=r.recreated[0],
                support=MEASURED,
                evidence=(f"new objects after a forward: {names(r.recreated)}",),
            )
        )
    for how, (_, cause) in _HOW.items():
        found = [name for name, held in r.unregistered if held == how]
        if found:
            causes.append(
                replace(
                    cause,
                    where=found[0],
                    support=MEASURED,
                    evidence=(f"{len(found)} such tensor(s) reach the loss",),
                )
            )
    if r.not_in_optimizer:
        evidence = (
            (
                f"{len(r.stale_in_optimizer)} tensors the optimizer holds are no parameter "
                "of the model",
            )
            if r.stale_in_optimizer
            else ()
        )
        # A replaced layer leaves its old tensors in the optimizer; without any, it was a subset.
        stale = bool(r.stale_in_optimizer)
        replaced = replace(
            _REPLACED,
            where=r.not_in_optimizer[0],
            evidence=evidence,
            support=MEASURED if stale else CONTRADICTED,
        )
        subset = replace(
            _SUBSET,
            where=r.not_in_optimizer[0],
            support=CONSISTENT if stale else MEASURED,
            evidence=() if stale else ("every tensor the optimizer holds is a model parameter",),
        )
        causes += [replaced, subset]
    return causes


def _explain(r: ParamsRegisteredResult) -> Explanation:
    problem = r.problems[0]
    lines = []
    if r.recreated:
        lines.append(f"Parameters that are new objects after a forward: {names(r.recreated)}")
    for how, (what, _) in _HOW.items():
        found = [name for name, held in r.unregistered if held == how]
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if found[5:] else "")
            lines.append(f"{what}: {names(found) if how != 'forward' else shown}")
    if r.not_in_optimizer:
        lines.append(
            f"Parameters that reach the loss but not the optimizer: {names(r.not_in_optimizer)}"
        )
        if r.stale_in_optimizer:
            lines.append(
                f"Tensors the optimizer holds that are no parameter of the model: "
                f"{len(r.stale_in_optimizer)}, of shapes {', '.join(r.stale_in_optimizer[:5])}"
            )
    lines.append(
        f"Optimizer compared: {r.optimizer or 'none known (built from model.parameters())'}; "
        f"{r.reached} tensors reach the loss, the model has {r.n_params} parameters"
    )
    count = {
        "recreated": len(r.recreated),
        "unregistered": len(r.unregistered),
        "not_in_optimizer": len(r.not_in_optimizer),
    }[problem]
    one = count == 1
    header = {
        "recreated": f"{count} parameter{'' if one else 's'} {'is' if one else 'are'} "
        "re-created in every forward!",
        "unregistered": f"{count} tensor{'' if one else 's'} {'gets' if one else 'get'} "
        f"gradients but {'is' if one else 'are'} not {'a parameter' if one else 'parameters'} "
        "of the model!",
        "not_in_optimizer": f"{count} parameter{'' if one else 's'} {'gets' if one else 'get'} "
        f"gradients but {'is' if one else 'are'} not in the optimizer!",
    }[problem]
    return Explanation(header=header, lines=lines)
