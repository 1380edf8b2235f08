"""Does every parameter learn? Gradients reach it, and one optimisation step changes it.

Catches the silent bugs that leave part of a network untrained while the loss still falls:
a layer frozen or detached by mistake, dead ReLU units, a step that never updates.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import math
import textwrap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from nnsanity._arguments import (
    LossFn,
    OptimizerFactory,
    Step,
    StepFactory,
    check_int,
    check_number,
    resolve_step,
)
from nnsanity._diagnosis import CONTRADICTED, MEASURED, Cause
from nnsanity._forensics import StepForensics
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail, names
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import autograd, preserved_module
from nnsanity._structures import tensors_in
from nnsanity._units import deterministic_mode, probe
from nnsanity.seeding import seed_torch

# A unit is a row of a Linear/Conv weight (dim 1 of a transposed conv's weight); it is dead on
# the batch when that row's gradient is exactly zero: e.g. a ReLU whose input is < 0 for every
# example. Healthy zoo models at init have none (0 of 32-128 units per layer), so half a layer
# dead is far outside what random init produces on a batch of 16.
_UNIT_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_TRANSPOSED = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


@dataclass(frozen=True, kw_only=True)
class ParamsUpdateResult(CheckResult):
    """Parameter names by problem found (empty tuples when healthy)."""

    max_dead_fraction: float  # the bound on dead units per layer
    steps: int  # optimisation steps taken: 1, or up to ``steps`` while gradients were zero
    loss: float
    n_params: int
    n_trainable: int
    frozen_by_mistake: tuple[str, ...]  # requires_grad=False, not matched by ``frozen``
    not_frozen: tuple[str, ...]  # matched by ``frozen`` but requires_grad=True
    nonfinite_grad: tuple[str, ...]
    no_grad: tuple[str, ...]  # trainable, but .grad is None after backward
    zero_grad: tuple[str, ...]  # gradient exactly zero everywhere
    dead_units: tuple[tuple[str, int, int], ...]  # (layer, units with zero gradient, units)
    unchanged: tuple[str, ...]  # trainable, identical after one step
    frozen_changed: tuple[str, ...]  # requires_grad=False, yet changed by the step
    # buffers matched by ``frozen`` (BatchNorm running statistics) that the user's step changed,
    # as (buffer name, relative change, whether its module was in train mode); only with step=
    frozen_buffers_changed: tuple[tuple[str, float, bool], ...] = ()
    # requires_grad=False set by the model's own constructor (Whisper's sinusoidal
    # embed_positions): frozen by design, so not by mistake
    frozen_by_model: tuple[str, ...] = ()
    nonfinite_after: tuple[str, ...]  # NaN/Inf after the step
    # of the zero-gradient parameters and dead units, those alive with dropout (and other
    # train-only randomness) off: dropout zeroes them, they are not dead
    alive_without_dropout: tuple[str, ...] = ()
    dropouts: tuple[tuple[str, float], ...] = ()  # (name, p) of dropout modules with p >= 0.5
    forensics: StepForensics | None = None  # what the user's step did to the optimizer
    # matched by ``unused``: kept for another task (a second head, a pretraining mask token),
    # so not judged
    unused: tuple[str, ...] = ()
    # of the ``no_grad`` parameters: those forward never reads (a layer defined but not called,
    # or one kept for another task), and those inside a module whose output the model returns
    # but the loss does not use (another task's head); the rest are read yet cut from the graph
    not_read: tuple[str, ...] = ()
    unused_outputs: tuple[tuple[str, str], ...] = ()  # (parameter, the module returning it)

    @property
    def too_dead(self) -> tuple[tuple[str, int, int], ...]:
        """The layers with more than ``max_dead_fraction`` of their units dead."""
        return tuple(d for d in self.dead_units if d[1] > self.max_dead_fraction * d[2])

    @property
    def problems(self) -> tuple[str, ...]:
        """The problems found, most fundamental first (the first is the one reported)."""
        found = [p for p in _PROBLEMS if p != "nothing_changed" and getattr(self, p)]
        if "unchanged" in found and len(self.unchanged) == self.n_trainable:
            found[found.index("unchanged")] = "nothing_changed"
        return tuple(found)

    @property
    def passed(self) -> bool:
        return not self.problems


def _patterns(frozen: Any, model: torch.nn.Module, what: str = "frozen") -> tuple[str, ...]:
    patterns = (frozen,) if isinstance(frozen, str) else frozen
    example = "frozen=['backbone.*']" if what == "frozen" else "unused=['cls.seq_relationship.*']"
    if not isinstance(patterns, Iterable) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"{what} must be a glob or a list of globs over parameter names, e.g. "
            f"{example}, got {frozen!r}."
        )
    patterns = tuple(patterns)
    all_names = [n for n, _ in model.named_parameters()]
    for pat in patterns:
        if not any(fnmatchcase(n, pat) for n in all_names):
            raise ValueError(
                f"{what} pattern {pat!r} matches no parameter of "
                f"{type(model).__name__}; its parameters are {names(all_names)}."
            )
    return patterns


_FREEZES = ("requires_grad_(False)", "requires_grad=False")


@functools.cache
def _frozen_in_init(cls: Any) -> frozenset[str]:
    """The attributes that ``cls.__init__`` (or a base's) freezes: ``self.x.requires_grad_(False)``,
    ``self.x = nn.Parameter(..., requires_grad=False)``, ``self.x.requires_grad = False``."""
    found: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if klass.__module__.startswith("torch.") or init is None:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
        except (OSError, TypeError, SyntaxError):  # no source (a builtin, an exec'd class)
            continue
        for stmt in ast.walk(tree):
            if not isinstance(stmt, (ast.Assign, ast.Expr, ast.AnnAssign)):
                continue
            text = ast.unparse(stmt).replace(" ", "")
            if any(f in text for f in _FREEZES):
                found |= {
                    node.attr
                    for node in ast.walk(stmt)
                    if isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                }
    return frozenset(found)


def _frozen_by_model(model: torch.nn.Module, names: Iterable[str]) -> tuple[str, ...]:
    """Of the frozen parameters ``names``, those the model's own code freezes when it is built:
    a module's ``__init__`` freezes the attribute that leads to the parameter. A freeze loop in
    the user's script (BERT with its classifier frozen) is not in any ``__init__``."""
    modules = dict(model.named_modules())
    out = []
    for name in names:
        parts = name.split(".")
        for i in range(len(parts)):
            owner = modules.get(".".join(parts[:i]))
            if owner is not None and parts[i] in _frozen_in_init(owner.__class__):
                out.append(name)
                break
    return tuple(out)


def _dead_units(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Per Linear/Conv layer, which units get exactly zero gradient in weight row and bias.

    The bias gradient is the unit's summed error, so a layer fed all-zero inputs (weight rows
    zero, bias alive) is not counted; without a bias only the weight row can be read.
    """
    found = {}
    for name, m in model.named_modules():
        if not isinstance(m, _UNIT_LAYERS + _TRANSPOSED):
            continue
        w, b = m.weight, m.bias
        # a parametrised weight (weight_norm: wav2vec2's positional conv) is computed, no leaf
        if not w.requires_grad or not w.is_leaf or w.grad is None:
            continue
        g = w.grad.detach().transpose(0, 1) if isinstance(m, _TRANSPOSED) else w.grad.detach()
        zero = (g.reshape(g.shape[0], -1) == 0).all(1)
        if b is not None and b.grad is not None and b.shape[0] == zero.shape[0]:
            zero &= b.grad.detach() == 0
        found[name or type(m).__name__] = zero
    return found


@contextlib.contextmanager
def _activity(model: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Per Linear/Conv layer, which units' outputs are positive somewhere in the forward passes
    run inside (read after a normalisation layer that takes the output directly, as in conv ->
    BatchNorm -> ReLU), filled in on exit. A ReLU passes such a unit, so a zero gradient there
    is no dead ReLU: the loss reads other outputs (a detector's box regression scores only the
    anchors matched to a box, and the 4 coordinates of the target class)."""
    seen: dict[int, tuple[str, int, torch.Tensor]] = {}  # output id -> (layer, unit dim, value)
    calls: list[tuple[str, int, torch.Tensor]] = []
    names = {m: n or type(m).__name__ for n, m in model.named_modules()}

    def layer(module: torch.nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim():
            dim = -1 if isinstance(module, torch.nn.Linear) or out.dim() == 1 else 1
            seen[id(out)] = (names[module], dim, out.detach())
            calls.append(seen[id(out)])

    def norm(module: torch.nn.Module, args: Any, out: Any) -> None:
        found = seen.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
        if found is not None and isinstance(out, torch.Tensor) and out.shape == args[0].shape:
            calls.append((found[0], found[1], out.detach()))

    handles = [
        m.register_forward_hook(layer if isinstance(m, _UNIT_LAYERS + _TRANSPOSED) else norm)
        for m in model.modules()
        if isinstance(m, _UNIT_LAYERS + _TRANSPOSED) or "Norm" in type(m).__name__
    ]
    active: dict[str, torch.Tensor] = {}
    try:
        yield active
    finally:
        for handle in handles:
            handle.remove()
        for name, dim, out in calls:
            positive = (out.movedim(dim, 0).reshape(out.shape[dim], -1) > 0).any(1)
            if name in active and active[name].shape == positive.shape:
                active[name] |= positive
            elif name not in active:
                active[name] = positive


def _without_active(
    dead: dict[str, torch.Tensor], active: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``dead`` less the units ``_activity`` saw active: only those a ReLU blocks stay."""
    return {
        n: z & ~active[n] if n in active and active[n].shape == z.shape else z
        for n, z in dead.items()
    }


def measure_params_update(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    frozen: str | Iterable[str] = (),
    unused: str | Iterable[str] = (),
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    steps: int = 3,
    max_dead_fraction: float = 0.5,
    unpack: bool | None = None,
    seed: int = 0,
) -> ParamsUpdateResult:
    """Read the gradients, then take up to ``steps`` optimisation steps; see the assert."""
    steps = check_int(steps, "steps", minimum=1)
    max_dead_fraction = check_number(max_dead_fraction, "max_dead_fraction", low=0, high=1)
    step = resolve_step(model, optimizer, step, step_factory)
    h = Harness(model, batch, loss_fn, seed=seed, optimizer=optimizer, step=step, unpack=unpack)
    patterns = _patterns(frozen, h.model)
    spare = _patterns(unused, h.model, "unused")
    with h.isolated():
        params = dict(h.model.named_parameters())
        listed = {n for n in params if any(fnmatchcase(n, pat) for pat in patterns)}
        kept = {n for n in params if any(fnmatchcase(n, pat) for pat in spare)}
        trainable = [n for n, p in params.items() if p.requires_grad]
        judged = [n for n in trainable if n not in kept]
        before = {n: p.detach().clone() for n, p in params.items()}
        with _activity(h.model) as active:
            loss = h.backward()
        grads = {n: g for n in trainable if (g := params[n].grad) is not None}
        nonzero = {n for n, g in grads.items() if bool(g.any())}
        dead = _without_active(_dead_units(h.model), active)
        run = h.stepper()
        buffers = {
            n: b for n, b in h.model.named_buffers() if any(fnmatchcase(n, pat) for pat in patterns)
        }
        # A gradient that is None stays None (the parameter is not in the graph), so those fail
        # at once; an exactly zero one can belong to a zero-initialised branch (a residual
        # block's last norm at 0, a gate) that opens after the first update, so while some are
        # zero (or units dead) and none is None, up to ``steps`` steps probe again.
        taken = 0
        drifted: tuple[tuple[str, float, bool], ...] = ()
        while True:
            for p in params.values():
                p.grad = None  # the step starts from fresh gradients, as in a training loop
            held = {n: b.detach().clone() for n, b in buffers.items()} if taken == 0 else None
            run()
            taken += 1
            if held is not None and step is not None:  # the user's step chose the modes
                drifted = _drifted(h.model, buffers, held)
            # a layer that LayerDrop or stochastic depth skipped this step changes at the next
            waiting = (
                set(grads) - nonzero
                or any(z.any() for z in dead.values())
                or any(torch.equal(before[n], params[n]) for n in trainable)
            )
            finite = all(bool(torch.isfinite(p).all()) for p in params.values())
            if taken == steps or not waiting or len(grads) < len(trainable) or not finite:
                break
            with _activity(h.model) as active:
                h.backward()
            nonzero |= {n for n in grads if (g := params[n].grad) is not None and bool(g.any())}
            for name, zero in _without_active(_dead_units(h.model), active).items():
                if name in dead:
                    dead[name] &= zero
        after = {n: p.detach() for n, p in params.items()}

        def pick(cond: Any, among: Iterable[str]) -> tuple[str, ...]:
            return tuple(n for n in among if cond(n))

        zeroed = pick(lambda n: n not in nonzero and n not in kept, grads)
        frozen = pick(lambda n: n not in trainable, params)
        by_model = _frozen_by_model(h.model, (n for n in frozen if n not in listed))
        dead_layers = tuple((n, int(z.sum()), z.numel()) for n, z in dead.items() if z.any())
        alive = _alive_without_dropout(h, zeroed, dead_layers) if zeroed or dead_layers else ()
        r = ParamsUpdateResult(
            seed=h.seed,
            steps=taken,
            max_dead_fraction=max_dead_fraction,
            loss=loss,
            n_params=len(params),
            n_trainable=len(trainable),
            frozen_by_mistake=pick(lambda n: n not in listed and n not in by_model, frozen),
            frozen_by_model=by_model,
            not_frozen=pick(lambda n: n in listed, trainable),
            nonfinite_grad=pick(lambda n: not bool(torch.isfinite(grads[n]).all()), grads),
            no_grad=(missing := pick(lambda n: n not in grads, judged)),
            zero_grad=zeroed,
            dead_units=dead_layers,
            unchanged=pick(lambda n: torch.equal(before[n], after[n]), judged),
            frozen_changed=pick(
                lambda n: n not in trainable and not torch.equal(before[n], after[n]), params
            ),
            frozen_buffers_changed=drifted,
            nonfinite_after=pick(lambda n: not bool(torch.isfinite(after[n]).all()), params),
            alive_without_dropout=alive,
            dropouts=tuple(
                (n, float(m.p))
                for n, m in h.model.named_modules()
                if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p >= 0.5
            ),
            forensics=h.forensics(),
            unused=tuple(n for n in params if n in kept),
        )
        if missing:
            not_read, returned = _reads(h, missing)
            r = replace(r, not_read=not_read, unused_outputs=returned)
    return diagnosed(r, _diagnose)


class _Reads(TorchFunctionMode):
    """Records which of some tensors any torch function reads while it is active."""

    def __init__(self, watched: dict[int, str]) -> None:
        super().__init__()
        self.watched = watched
        self.read: set[str] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        for a in tensors_in((args, kwargs)):
            if id(a) in self.watched:
                self.read.add(self.watched[id(a)])
        return func(*args, **kwargs)


def _reads(
    h: Harness, missing: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Of the parameters ``missing`` (no gradient): those one forward never reads, and those in
    a module whose output is an output of the model (another task's head, returned but not in
    this loss), with that module's name."""
    params = dict(h.model.named_parameters())
    modules = dict(h.model.named_modules())
    outputs_of: dict[str, list[torch.Tensor]] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
            outputs_of.setdefault(name, []).extend(tensors_in(out))

        return hook

    owners = {n.rpartition(".")[0] for n in missing}
    prefixes = {".".join(o.split(".")[:i]) for o in owners for i in range(1, o.count(".") + 2)}
    handles = [modules[m].register_forward_hook(keep(m)) for m in prefixes if m in modules]
    mode = _Reads({id(params[n]): n for n in missing})
    try:
        seed_torch(h.seed)
        with torch.no_grad(), mode:
            returned = {id(t) for t in tensors_in(h.forward())}
    finally:
        for handle in handles:
            handle.remove()
    not_read = tuple(n for n in missing if n not in mode.read)
    heads = []
    for n in missing:
        if n in not_read:
            continue
        parts = n.split(".")[:-1]
        for i in range(len(parts), 0, -1):  # the innermost module that returns a model output
            m = ".".join(parts[:i])
            if any(id(t) in returned for t in outputs_of.get(m, ())):
                heads.append((n, m))
                break
    return not_read, tuple(heads)


def _drifted(
    model: torch.nn.Module, buffers: dict[str, torch.Tensor], held: dict[str, torch.Tensor]
) -> tuple[tuple[str, float, bool], ...]:
    """The frozen buffers one user step changed: (name, ||after - before|| / ||before||, whether
    the owning module was in train mode), largest change first. A counter such as
    ``num_batches_tracked`` counts with its statistics and is left out of the listing."""
    modules = dict(model.named_modules())
    out = []
    for name, b in buffers.items():
        if not b.is_floating_point() or torch.equal(b, held[name]):
            continue
        change = float((b.detach() - held[name]).norm() / held[name].norm().clamp_min(1e-12))
        owner = modules.get(name.rpartition(".")[0])
        out.append((name, change, bool(owner is not None and owner.training)))
    return tuple(sorted(out, key=lambda t: -t[1]))


def _alive_without_dropout(
    h: Harness, zero: tuple[str, ...], dead: tuple[tuple[str, int, int], ...]
) -> tuple[str, ...]:
    """The zero-gradient parameters and the layers with dead units that come alive in a seeded
    backward with dropout off (BatchNorm kept in train mode): what dropout, not death, zeroes."""
    with preserved_module(h.model):
        probed, _ = probe(h)
        with deterministic_mode(h.model), autograd():
            for p in h.model.parameters():
                p.grad = None
            seed_torch(h.seed)
            h.graph_loss(h.loss_forward()).backward()
        params = dict(h.model.named_parameters())
        live = {n for n in zero if (g := params[n].grad) is not None and bool(g.any())}
    for name, count, _ in dead:
        if name in probed and int(probed[name].sum()) < count:
            live.add(name)
    return tuple(sorted(live))


def assert_params_update(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    frozen: str | Iterable[str] = (),
    unused: str | Iterable[str] = (),
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    steps: int = 3,
    max_dead_fraction: float = 0.5,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> ParamsUpdateResult:
    """Check that every trainable parameter gets a non-zero finite gradient and is updated.

    Fails at once when a parameter has ``requires_grad=False`` without matching a glob in
    ``frozen`` (or matches one yet is trainable), unless the model's own constructor freezes
    it (a statement of a module's ``__init__`` such as Whisper's
    ``self.embed_positions.requires_grad_(False)``: a fixed table, frozen by design; listed in
    ``frozen_by_model``; a freeze loop run on the built model is no such statement), gets no
    gradient at all (``.detach()``, ``no_grad``, never used: ``.grad`` stays None) or a
    non-finite one. A gradient that is
    exactly zero, and units of a Linear/Conv layer whose gradient is exactly zero, get up to
    ``steps`` (3) optimisation steps of ``optimizer`` (default Adam 3e-4) or of your
    ``step(batch) -> loss`` to come alive: a zero-initialised branch (timm's ``zero_init_last``
    residual blocks, a gate initialised at 0) passes its gradient on after the first update, one
    level of zero-init per step. After them it fails when a parameter's gradient was zero at
    every step, when over ``max_dead_fraction`` of a layer's units stayed dead (dead ReLUs:
    zero gradient and an output <= 0 on the whole batch, read after a BatchNorm/LayerNorm that
    takes it directly; a unit with positive outputs yet no gradient is one the loss does not
    read, as a detector's box regression scores only the anchors matched to a box), or
    when the steps left a trainable parameter unchanged, changed a frozen one, or made one
    non-finite. With your ``step``, the buffers that ``frozen`` matches (a frozen backbone's
    BatchNorm ``running_mean``/``running_var``) must come out of one step unchanged too:
    ``requires_grad=False`` stops the optimizer, not a BatchNorm in train mode, which overwrites
    its statistics with every batch (pytorch/pytorch#86590); the failure names the module and
    whether your step left it in train mode. Without ``step`` the check's own step puts the
    whole model in train mode, so buffers are not judged.

    Proves: on this batch, every parameter is wired to the loss and the steps update it.
    Does not prove: the updates have a sensible size or direction (see the loss-decrease and
    overfitting checks), or that a unit dead on this batch is dead on all data.

    ``unused`` (globs over parameter names, like ``frozen``) names trainable parameters this
    loss is not meant to train: a model kept for more than one task (``BertForPreTraining``'s
    next-sentence head under a masked-LM loss, a pretraining ``mask_token`` read only when
    masking). They are not judged. Without it, a parameter with no gradient fails, and the
    diagnosis says which kind it is, from one more forward: never read by it (a layer defined
    but not called, or kept for another task), inside a module whose output the model returns
    but the loss does not use (another task's head), or read yet cut from the graph
    (``.detach()``, ``torch.no_grad()``: a bug, whatever ``unused`` says of others).

    ``step_factory(model) -> step`` builds your step afresh for this check (with its own
    optimizer: no state carried over from another check); pass it or ``step``, not both.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_params_update(
        model, batch, loss_fn, frozen=frozen, unused=unused, optimizer=optimizer, step=step,
        step_factory=step_factory, steps=steps,
        max_dead_fraction=max_dead_fraction, unpack=unpack, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _c(id: str, summary: str, remedy: str = "") -> Cause:
    return Cause(id=id, summary=summary, remedy=remedy)


_DETACH = _c(
    "graph_cut",
    "a .detach(), .item()/.numpy() round trip or torch.no_grad() in forward cuts it from the loss",
    "keep the graph",
)
_RELU = _c(
    "dead_relu",
    "dead ReLUs: a large negative bias or too high a learning rate pushed units below zero for "
    "every example",
    "use He init with zero biases, LeakyReLU, or a lower lr",
)
_FROZEN_HINT = "frozen= [glob, ...] naming the parameters meant to stay fixed."
# Each problem, in the order it is reported: (header, causes, relax).
_PROBLEMS: dict[str, tuple[str, tuple[Cause, ...], str | None]] = {
    "frozen_by_mistake": (
        "{n} of {total} parameters are frozen (requires_grad=False)!",
        (
            _c(
                "frozen_by_mistake",
                "left frozen after fine-tuning or a freeze loop that matched too much",
                "call requires_grad_(True)",
            ),
            _c("frozen_on_purpose", "frozen on purpose", "list it in frozen=[...]"),
        ),
        _FROZEN_HINT,
    ),
    "not_frozen": (
        "{n} of {total} parameters match frozen= but are trainable!",
        (
            _c(
                "freeze_not_applied",
                "the freeze was never applied",
                "call requires_grad_(False) on them",
            ),
            _c("glob_too_wide", "the glob matches more than intended", "narrow it"),
        ),
        None,
    ),
    "nonfinite_grad": (
        "{n} of {total} parameters get NaN/Inf gradients!",
        (
            _c(
                "missing_epsilon",
                "log/sqrt/division of a value that can be zero",
                "clamp it or add an epsilon",
            ),
            _c(
                "exploding_activations",
                "exploding activations",
                "run nnsanity.assert_finite to find the first non-finite value",
            ),
        ),
        None,
    ),
    "no_grad": (
        "{n} of {total} parameters receive no gradient (.grad is None after backward)!",
        (
            _DETACH,
            _c(
                "unused_module",
                "the module is never called in forward (or its output never reaches the loss)",
                "remove it or wire it in",
            ),
            _c(
                "frozen_on_purpose",
                "frozen on purpose",
                "set requires_grad=False and list it in frozen=[...]",
            ),
        ),
        "unused= [glob, ...] naming parameters kept for another task (not this loss's).",
    ),
    "zero_grad": (
        "{n} of {total} parameters get an exactly zero gradient at every step!",
        (
            _RELU,
            _c(
                "constant_zero_gate",
                "a multiplication by a constant zero (a mask or gate that "
                "is not learned), or zero-initialised layers nested deeper than the steps taken",
                "initialise one randomly",
            ),
            _c(
                "zero_derivative_op",
                "an op with a zero derivative between it and the loss "
                "(argmax, rounding, a step function, a clamp that is always active)",
                "use a differentiable op",
            ),
        ),
        "steps= (more), for zero-initialised layers nested deeper.",
    ),
    "too_dead": (
        "Over {fraction:.0%} of a layer's units get exactly zero gradient (dead)!",
        (_RELU, _c("constant_inputs", "inputs all zero or constant", "check the data pipeline")),
        "max_dead_fraction= (larger), or steps= (more) for units behind a zero-initialised layer.",
    ),
    "nonfinite_after": (
        "{n} of {total} parameters are NaN/Inf after {steps}!",
        (
            _c("lr_too_high", "a learning rate far too high", "lower it"),
            _c(
                "optimizer_division",
                "the step divides by zero (e.g. a custom optimiser without an epsilon)",
                "add an epsilon",
            ),
        ),
        None,
    ),
    "nothing_changed": (
        "None of the {trainable} trainable parameters changed after {steps}!",
        (
            _c(
                "no_optimizer_step",
                "the step never calls optimizer.step() (or calls it before backward)",
                "call optimizer.step() after loss.backward()",
            ),
            _c(
                "optimizer_holds_other_params",
                "the optimizer holds copies or another model's parameters",
                "build it from model.parameters() after moving the model to its device",
            ),
            _c("lr_zero", "a learning rate of zero", "set a positive lr"),
        ),
        None,
    ),
    "unchanged": (
        "{n} of {total} parameters did not change after {steps}!",
        (
            _c(
                "missing_from_optimizer",
                "they are missing from the optimizer",
                "build it from model.parameters() (or add a param group)",
            ),
            _c("lr_zero", "a learning rate of zero in their param group", "set a positive lr"),
        ),
        None,
    ),
    "frozen_buffers_changed": (
        "{n} buffers of frozen modules changed in your step!",
        (
            _c(
                "frozen_module_in_train_mode",
                "a frozen module is left in train mode: requires_grad=False stops the optimizer, "
                "not BatchNorm, which overwrites its running statistics with every batch",
                "call .eval() on the frozen modules after each model.train() (or override the "
                "model's train() to keep them in eval mode)",
            ),
            _c(
                "written_outside_optimizer",
                "the step writes to them directly (an EMA or statistics update in your code)",
                "leave the frozen modules' buffers alone in the step",
            ),
        ),
        None,
    ),
    "frozen_changed": (
        "{n} frozen parameters changed after {steps}!",
        (
            _c(
                "written_outside_optimizer",
                "the step writes to them directly (weight decay or an EMA outside the optimizer)",
                "skip parameters with requires_grad=False",
            ),
        ),
        None,
    ),
}


def _diagnose(r: ParamsUpdateResult) -> list[Cause]:
    problem = r.problems[0]
    found: tuple[str, ...] = (
        tuple(n for n, _, _ in r.too_dead) if problem == "too_dead" else getattr(r, problem)
    ) if problem != "nothing_changed" else ()  # fmt: skip
    causes = [replace(c, where=found[0] if found else None) for c in _PROBLEMS[problem][1]]
    if problem == "no_grad":
        return _no_grad_causes(r, causes)
    if problem == "frozen_buffers_changed":
        name, change, training = r.frozen_buffers_changed[0]
        module = name.rpartition(".")[0] or name
        evidence = (f"'{name}' moved by {change:.1%} of its norm in one step of yours",)
        first = replace(
            causes[0],
            where=module,
            evidence=(*evidence, f"'{module}' was in {'train' if training else 'eval'} mode"),
            support=MEASURED if training else CONTRADICTED,
        )
        causes = [first, replace(causes[1], where=module, evidence=evidence)]
        if not training:
            causes.reverse()
    if problem in ("zero_grad", "too_dead"):
        revived = [n for n in found if n in r.alive_without_dropout]
        if revived:
            where = f"'{r.dropouts[0][0]}' (Dropout)" if r.dropouts else None
            p = f" (p={r.dropouts[0][1]:g})" if r.dropouts else ""
            causes = [
                Cause(
                    id="dropout_zeroes_units",
                    summary=f"dropout zeroes them in train mode{p}, not dead units",
                    remedy="lower the dropout probability (p=1.0 drops everything)",
                    evidence=(f"with dropout off they get gradients: {names(revived)}",),
                    where=where,
                    support=MEASURED,
                ),
                *(replace(c, support=CONTRADICTED) if c.id == "dead_relu" else c for c in causes),
            ]
    return causes


def _no_grad_causes(r: ParamsUpdateResult, generic: list[Cause]) -> list[Cause]:
    """Causes of parameters without a gradient, by what one more forward saw of them."""
    causes = []
    cut = [n for n in r.no_grad if n not in r.not_read and n not in dict(r.unused_outputs)]
    if r.not_read:
        causes.append(Cause(
            id="not_read_by_forward",
            summary=f"{names(r.not_read)} are never read by forward: a layer defined but never "
            "called, or a parameter kept for another task (a pretraining mask token, another "
            "task's head)",
            remedy="call it in forward; if it is kept for another task, pass unused=[...] "
            "naming it",
            evidence=("no torch function read them during a forward of the batch",),
            where=r.not_read[0], support=MEASURED,
        ))  # fmt: skip
    if r.unused_outputs:
        name, module = r.unused_outputs[0]
        causes.append(Cause(
            id="output_not_in_loss",
            summary=f"'{module}' computes an output the model returns but this loss does not "
            "use (another task's head)",
            remedy=f"if that is by design, pass unused=['{module}.*']; else add its output "
            "to the loss",
            evidence=(f"'{module}' returns a tensor of the model's outputs; '{name}' gets no "
                      "gradient from the loss",),
            where=module, support=MEASURED,
        ))  # fmt: skip
    if cut:
        causes.append(replace(_DETACH, where=cut[0], support=MEASURED, evidence=(
            f"{names(cut)} are read in forward, yet get no gradient",
        )))  # fmt: skip
    rest = [c for c in generic if c.id not in {c.id for c in causes}]
    return causes + [c for c in rest if c.id != "unused_module" or not causes]


def _dead_text(dead: tuple[tuple[str, int, int], ...]) -> str:
    return "; ".join(f"'{n}' {d}/{t} units ({d / t:.0%})" for n, d, t in dead[:5])


def _explain(r: ParamsUpdateResult) -> Explanation:
    problem = r.problems[0]
    header, _, relax = _PROBLEMS[problem]
    if problem == "too_dead":
        worst = max(d / t for _, d, t in r.too_dead)
        lines = [
            f"Dead units: {_dead_text(r.too_dead)} "
            f"(up to {r.max_dead_fraction:.0%} of a layer allowed)"
        ]
        relax = f"max_dead_fraction={math.ceil(100 * worst) / 100:g} or more."
    elif problem == "nothing_changed":
        lines = ["Every parameter is identical before and after the step"]
    elif problem == "frozen_buffers_changed":
        lines = [
            "Buffers: " + ", ".join(
                f"'{n}' changed by {c:.1%} ({'train' if t else 'eval'} mode)"
                for n, c, t in r.frozen_buffers_changed[:5]
            ) + " (a frozen module's buffers must not change)"
        ]  # fmt: skip
    else:
        lines = [f"Parameters: {names(getattr(r, problem))}"]
        if problem == "zero_grad" and r.too_dead:
            lines.append(f"Dead units: {_dead_text(r.too_dead)}")
    n = r.n_trainable if problem == "nothing_changed" else len(getattr(r, problem))
    text = header.format(
        n=n,
        total=r.n_params,
        trainable=r.n_trainable,
        fraction=r.max_dead_fraction,
        steps=f"{r.steps} step" + ("s" if r.steps > 1 else ""),
    )
    return Explanation(header=text, lines=lines, relax=relax)
