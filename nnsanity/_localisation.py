"""Localisation: the first module, and the first operation inside it, where a property breaks.

The dependency checks (batch independence, causality, padding invariance, eval-mode determinism)
compare the model's outputs on two forward passes, one on the batch and one with the inputs that
must not matter changed; finiteness judges one pass. When the outputs break the property, the
same passes are rerun with every module's ``forward`` wrapped (not hooked: hooks turn PyTorch's
transformer fast path off) so that each module call's inputs and outputs are judged by the same
property, and the first module, in the order calls complete, whose output breaks it while its
inputs hold is where the break is made: two passes in all, not one per module. When that module's
own ``forward`` is not PyTorch's, two more passes trace the operations inside it (a
``TorchFunctionMode`` active only in its own code, not in its submodules'), and the first
operation that breaks the property on the way to the module's output is named with its line.
Only a failed check pays for any of this.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from nnsanity._diagnosis import Operation, Place
from nnsanity._structures import tensors_in

_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(os.path.abspath(__file__))
Region = Callable[[torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class Property:
    """What must hold of every tensor of a pass: ``region(t)`` is the part of ``t`` that must stay
    as it was (None: ``t`` cannot be judged, it lacks the axis), ``axis(t)`` the dimension the
    property is about (the batch, the positions) for naming an op's ``dim``; ``bound`` is the
    largest change allowed relative to the region's scale. ``single``: one pass, where the
    region must be finite (the property of ``assert_finite``)."""

    region: Region
    axis: Callable[[torch.Tensor], int | None]
    bound: float
    single: bool = False

    def broken(self, base: torch.Tensor | None, now: torch.Tensor) -> bool:
        r = self.region(now)
        if r is None:
            return False
        if self.single:
            return (r.is_floating_point() or r.is_complex()) and not bool(torch.isfinite(r).all())
        assert base is not None
        a = self.region(base)
        if a is None or a.shape != r.shape:
            return a is not None
        if not (a.is_floating_point() or a.is_complex()):
            return not torch.equal(a, r)
        a, r = a.detach().double(), r.detach().double()
        d = (a - r).abs().nan_to_num(nan=math.inf)
        d[(a == r) | (a.isnan() & r.isnan())] = 0.0  # the same infinity (a mask) is no change
        if not d.numel():
            return False
        scale = float(a.abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).max())
        return float(d.max()) > self.bound * scale or (scale == 0 and float(d.max()) > 0)


def _grouped(t: torch.Tensor, b: int) -> torch.Tensor | None:
    """``t`` as (b, k, ...) when its first dim is the batch or batch-major groups of it (the
    (B * heads, T, d) of attention code); None otherwise."""
    if not t.dim() or t.shape[0] % b:
        return None
    return t.reshape(b, t.shape[0] // b, *t.shape[1:])


def along(
    size: int, kept: torch.Tensor | None, *, dim: int | None = None
) -> tuple[Callable[[torch.Tensor], int | None], Region]:
    """``(axis, region)`` for a property about the entries of one axis of length ``size``.

    ``dim=None``: the batch, dim 0 (also when it holds batch-major groups, B * heads), or dim 1
    of a time-first tensor. Else positions: ``dim`` where a tensor has that length there, else
    its first dim after the batch of that length (dim 2 of (B, heads, T, d) attention tensors).
    ``kept`` selects the entries that must hold (indices, or a bool vector). A tensor without
    such an axis (a reduction over it) must hold whole: it changed only if it gathered what
    changed."""

    def axis(t: torch.Tensor) -> int | None:
        if dim is None:
            if t.dim() and t.shape[0] % size == 0:
                return 0
            return 1 if t.dim() > 1 and t.shape[1] == size else None
        if t.dim() > dim and t.shape[dim] == size:
            return dim
        return next((d for d in range(1, t.dim()) if t.shape[d] == size), None)

    def region(t: torch.Tensor) -> torch.Tensor:
        d = axis(t)
        if d is None or kept is None:
            return t
        index = (kept.nonzero().flatten() if kept.dtype == torch.bool else kept).to(t.device)
        if dim is None and d == 0:
            grouped = _grouped(t, size)
            assert grouped is not None
            return grouped.index_select(0, index)
        return t.index_select(d, index)

    return axis, region


def real_positions(
    mask: torch.Tensor,
) -> tuple[Callable[[torch.Tensor], int | None], Region]:
    """``(axis, region)`` for padding invariance: ``mask`` (B, T) is True at padded positions;
    a tensor with the batch in front (or batch-major groups) and the positions after it holds
    at each sample's real positions; one with the positions but another layout, at the positions
    real in every sample; one without positions (pooled), whole."""
    b, n = mask.shape
    real = ~mask

    def axis(t: torch.Tensor) -> int | None:
        return next((d for d in range(1, t.dim()) if t.shape[d] == n), None)

    def region(t: torch.Tensor) -> torch.Tensor:
        d = axis(t)
        if d is None:
            return t
        grouped = _grouped(t, b)
        if grouped is not None:
            moved = grouped.movedim(d + 1, 2)  # (b, k, n, ...)
            return moved.transpose(0, 1)[:, real.to(t.device)]  # (k, n_real, ...)
        common = real.all(0).nonzero().flatten().to(t.device)
        return t.index_select(d, common)

    return axis, region


def whole() -> tuple[Callable[[torch.Tensor], int | None], Region]:
    """Every floating-point tensor, all of it (eval determinism, finiteness)."""
    return (lambda t: None), (lambda t: t if t.is_floating_point() else None)


# -- the module calls of one pass -----------------------------------------------------------


@dataclass
class _Call:
    name: str
    module: torch.nn.Module
    parent: int | None  # start index of the enclosing call
    inputs: list[torch.Tensor] = field(default_factory=list)  # clones (reference pass only)
    outputs: list[torch.Tensor] = field(default_factory=list)
    in_broken: bool = False
    out_broken: bool = False
    done: int = -1  # completion order


class _Calls:
    """Every module call of one pass, in start order, judged against a reference pass."""

    def __init__(self, prop: Property, reference: list[_Call] | None) -> None:
        self.prop, self.reference = prop, reference
        self.calls: list[_Call] = []
        self.open: list[int] = []
        self.completed = 0
        self.mismatch = False

    def _judge(self, k: int, tensors: list[torch.Tensor], stored: str) -> bool:
        if self.prop.single:
            return any(self.prop.broken(None, t) for t in tensors)
        ref = self.reference[k] if self.reference is not None and k < len(self.reference) else None
        if ref is None or ref.module is not self.calls[k].module:
            self.mismatch = True
            return False
        base = getattr(ref, stored)
        if len(base) != len(tensors):
            return True
        return any(self.prop.broken(a, b) for a, b in zip(base, tensors, strict=True))

    def start(self, name: str, module: torch.nn.Module, args: Any, kwargs: Any) -> int:
        k = len(self.calls)
        self.calls.append(_Call(name, module, self.open[-1] if self.open else None))
        tensors = [t.detach() for t in tensors_in((args, kwargs))]
        if self.reference is None and not self.prop.single:
            self.calls[k].inputs = [t.clone() for t in tensors]
        else:
            self.calls[k].in_broken = self._judge(k, tensors, "inputs")
        self.open.append(k)
        return k

    def end(self, k: int, out: Any) -> None:
        self.open.pop()
        tensors = [t.detach() for t in tensors_in(out)]
        call = self.calls[k]
        if self.reference is None and not self.prop.single:
            call.outputs = [t.clone() for t in tensors]
        else:
            call.out_broken = self._judge(k, tensors, "outputs")
            if self.reference is not None:
                self.reference[k].inputs = self.reference[k].outputs = []  # free as we go
        call.done = self.completed
        self.completed += 1


def _watch(
    forward: Any,
    name: str,
    module: torch.nn.Module,
    start: Callable[..., int],
    end: Callable[[int, Any], None],
) -> Any:
    @functools.wraps(forward)
    def watched(*args: Any, **kwargs: Any) -> Any:
        k = start(name, module, args, kwargs)
        out = forward(*args, **kwargs)
        end(k, out)
        return out

    return watched


@contextlib.contextmanager
def _wrapped(
    model: torch.nn.Module, start: Callable[..., int], end: Callable[[int, Any], None]
) -> Iterator[None]:
    """Every module's ``forward`` wrapped for the block (an instance attribute, put back)."""
    wrapped = []
    for name, m in model.named_modules():
        own = m.__dict__.get("forward")
        try:
            m.forward = _watch(m.forward, name, m, start, end)
        except (AttributeError, TypeError, RuntimeError):  # a scripted module: not watched
            continue
        wrapped.append((m, own))
    try:
        yield
    finally:
        for m, own in wrapped:
            del m.forward
            if own is not None:
                m.forward = own


def _pass(
    model: torch.nn.Module, run: Callable[[], Any], prop: Property, ref: list[_Call] | None
) -> _Calls:
    calls = _Calls(prop, ref)
    with _wrapped(model, calls.start, calls.end), torch.no_grad():
        run()
    return calls


def _torch_code(fn: Any) -> bool:
    try:
        path = inspect.getsourcefile(fn) or ""
    except TypeError:
        return True
    return os.path.abspath(path).startswith(_TORCH_DIR)


def _source(fn: Any) -> str | None:
    try:
        path = inspect.getsourcefile(fn)
        line = inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        return None
    return f"{os.path.basename(path)}:{line}" if path else None


def locate(
    model: torch.nn.Module,
    run_base: Callable[[], Any],
    run_changed: Callable[[], Any],
    prop: Property,
) -> Place | None:
    """The first place where ``prop`` breaks between a pass of ``run_base`` and one of
    ``run_changed`` (each a seeded forward of the model); for a ``single`` property, in a pass of
    ``run_changed`` alone. None when no module call breaks it (the break is outside the model,
    or the passes ran different modules)."""
    if prop.single:
        calls = _pass(model, run_changed, prop, None)
    else:
        base = _pass(model, run_base, prop, None)
        calls = _pass(model, run_changed, prop, base.calls)
        if calls.mismatch or len(calls.calls) != len(base.calls):
            return None
    culprits = sorted(
        (c for c in calls.calls if c.out_broken and not c.in_broken), key=lambda c: c.done
    )
    if not culprits:
        return None
    c = culprits[0]
    k = calls.calls.index(c)
    children = [(j, x) for j, x in enumerate(calls.calls) if x.parent == k]
    before = next(((j, x) for j, x in children if x.in_broken), None)
    held = [x for j, x in children if not x.out_broken and (before is None or j < before[0])]
    after = held[-1].name if held else None
    forward = type(c.module).forward
    place = Place(
        module=c.name,
        module_type=type(c.module).__name__,
        after=after,
        before=before[1].name if before else None,
    )
    if _torch_code(forward):
        return place
    occurrence = sum(1 for x in calls.calls[:k] if x.module is c.module)
    op = _first_op(model, c.module, occurrence, run_base, run_changed, prop)
    return Place(
        module=place.module,
        module_type=place.module_type,
        forward=_source(forward),
        operation=op.public() if op else None,
        after=after,
        before=place.before,
    )


# -- the operations inside one module's own forward ------------------------------------------


@dataclass
class Op:
    """One operation a module's own ``forward`` ran: its name with the arguments that say what
    it does (``softmax(dim=0)``), its line, and how it fared."""

    name: str
    detail: str
    line: str | None
    dim: int | None  # the op's dim argument, as a non-negative index of its first input
    on_axis: bool  # that dim is the property's axis (the batch, the positions)
    fill: float | None  # the value a masking op writes
    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    in_ids: list[int] = field(default_factory=list)
    out_ids: list[int] = field(default_factory=list)
    in_broken: list[bool] = field(default_factory=list)
    out_broken: bool = False

    @property
    def text(self) -> str:
        return f"{self.name}({self.detail})" if self.detail else self.name

    @property
    def masks(self) -> bool:
        return kind(self.name) == "mask"

    def public(self) -> Operation:
        return Operation(
            name=self.name, kind=kind(self.name), text=self.text, line=self.line,
            shape=tuple(self.inputs[0].shape) if self.inputs else None, dim=self.dim,
            on_axis=self.on_axis, fill=self.fill,
        )  # fmt: skip


_SOFTMAX = ("softmax", "log_softmax", "softmin")
_REDUCTIONS = ("mean", "sum", "std", "var", "amax", "amin", "max", "min", "logsumexp", "norm",
               "cumsum", "prod", "median")  # fmt: skip
_RESHAPES = ("view", "reshape", "flatten", "permute", "transpose", "movedim", "unflatten", "T",
             "mT", "swapaxes", "contiguous", "expand", "repeat")  # fmt: skip
_MASKING = ("masked_fill", "where", "masked_scatter", "__setitem__", "add", "__add__", "__iadd__")
KINDS = {"softmax": _SOFTMAX, "reduction": _REDUCTIONS, "reshape": _RESHAPES, "mask": _MASKING}


def kind(op_name: str) -> str:
    """``softmax``, ``reduction``, ``reshape``, ``mask`` or ``other``."""
    base = op_name.rstrip("_") if op_name not in ("__setitem__", "__add__", "__iadd__") else op_name
    return next((k for k, names in KINDS.items() if base in names), "other")


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":  # a property such as .T
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return str(name)


def _dim_of(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> int | None:
    if kind(name) not in ("softmax", "reduction"):
        return None
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    first = args[0] if args else None
    if isinstance(dim, int) and not isinstance(dim, bool) and isinstance(first, torch.Tensor):
        return dim % max(first.dim(), 1)
    return None


def _fill_of(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> float | None:
    if name.rstrip("_") == "masked_fill":
        value = kwargs.get("value", args[2] if len(args) > 2 else None)
    elif name == "where":
        value = next((a for a in args[1:] if isinstance(a, (int, float))), None)
    else:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    return float(value) if isinstance(value, (int, float)) else None


def _detail(name: str, args: Sequence[Any], kwargs: dict[str, Any], dim: int | None) -> str:
    if "dropout" in name:
        p = kwargs.get("p", kwargs.get("dropout_p", args[1] if len(args) > 1 else None))
        return f"p={p:g}" if isinstance(p, (int, float)) else ""
    if dim is not None:
        return f"dim={kwargs.get('dim', args[1] if len(args) > 1 else dim)}"
    fill = _fill_of(name, args, kwargs)
    if fill is not None:
        return f"value={fill:g}"
    if kind(name) == "reshape" and len(args) > 1:
        shown = [a for a in args[1:] if isinstance(a, (int, tuple, list, torch.Size))]
        return ", ".join(str(tuple(a) if isinstance(a, torch.Size) else a) for a in shown)
    return ""


def _caller() -> tuple[str | None, bool]:
    """``file:line`` of the innermost frame outside torch, and whether that frame is nnsanity's
    own (a check's hook, such as the padding's changed embeddings: not the model's code)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_TORCH_DIR):
            own = path.startswith(_OWN_DIR)
            return f"{os.path.basename(path)}:{frame.f_lineno}", own
        frame = frame.f_back  # type: ignore[assignment]
    return None, False


class _Trace(TorchFunctionMode):
    """Records the operations of one module call's own code (not of its submodules)."""

    def __init__(self, prop: Property) -> None:
        super().__init__()
        self.prop = prop
        self.ops: list[Op] = []
        self.keep: list[torch.Tensor] = []  # live tensors, so that their ids stay unique

    def record(self, op: Op, ins: list[torch.Tensor], outs: list[torch.Tensor]) -> None:
        op.in_ids, op.out_ids = [id(t) for t in ins], [id(t) for t in outs]
        op.outputs = [t.detach().clone() for t in outs]
        self.keep += ins + outs
        self.ops.append(op)

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        line, own = _caller()
        if own:
            return func(*args, **kwargs)
        name = _op_name(func)
        ins = tensors_in((list(args), kwargs))
        clones = [t.detach().clone() for t in ins]
        out = func(*args, **kwargs)
        outs = tensors_in(out)
        if out is None and ins:  # in place (__setitem__): the first argument is the result
            outs = ins[:1]
        if not outs:
            return out
        dim = _dim_of(name, args, kwargs)
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        axis = self.prop.axis(first) if first is not None else None
        op = Op(
            name=name,
            detail=_detail(name, args, kwargs, dim),
            line=line,
            dim=dim,
            on_axis=dim is not None and dim == axis,
            fill=_fill_of(name, args, kwargs),
            inputs=clones,
        )
        self.record(op, ins, list(outs))
        return out


def _traced_pass(
    model: torch.nn.Module,
    target: torch.nn.Module,
    occurrence: int,
    run: Callable[[], Any],
    prop: Property,
) -> tuple[list[Op], list[int]]:
    """The ops of ``target``'s ``occurrence``-th call in one pass, and the ids of its outputs.
    Calls of other modules inside it are recorded as one op each, with the trace off."""
    trace = _Trace(prop)
    seen = {"calls": 0, "active": False, "depth": 0}
    result: list[int] = []

    def start(name: str, m: torch.nn.Module, args: Any, kwargs: Any) -> int:
        if m is target and not seen["active"]:
            if seen["calls"] == occurrence:
                seen["active"] = True
                trace.__enter__()  # type: ignore[no-untyped-call]
                return 1
            seen["calls"] += 1
            return 0
        if seen["active"]:
            seen["depth"] += 1
            if seen["depth"] == 1:
                trace.__exit__(None, None, None)  # type: ignore[no-untyped-call]
                ins = tensors_in((args, kwargs))
                op = Op(
                    name=f"'{name}'", detail="", line=None, dim=None, on_axis=False, fill=None,
                    inputs=[t.detach().clone() for t in ins],
                )  # fmt: skip
                op.in_ids = [id(t) for t in ins]
                trace.keep += ins
                trace.ops.append(op)
            return 2
        return 0

    def end(k: int, out: Any) -> None:
        if k == 1:
            trace.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            seen["active"] = False
            seen["calls"] += 1
            result.extend(id(t) for t in tensors_in(out))
            trace.keep += tensors_in(out)
        elif k == 2:
            if seen["depth"] == 1:
                outs = tensors_in(out)
                child = trace.ops[-1]
                child.out_ids = [id(t) for t in outs]
                child.outputs = [t.detach().clone() for t in outs]
                trace.keep += outs
                trace.__enter__()  # type: ignore[no-untyped-call]
            seen["depth"] -= 1

    with _wrapped(model, start, end), torch.no_grad():
        run()
    return trace.ops, result


def _first_op(
    model: torch.nn.Module,
    target: torch.nn.Module,
    occurrence: int,
    run_base: Callable[[], Any],
    run_changed: Callable[[], Any],
    prop: Property,
) -> Op | None:
    """The first operation of ``target``'s own code that breaks ``prop`` while its inputs hold,
    among those from which broken tensors lead to its output; a masking op on that path that
    fails to mask is preferred (the mask that should have removed the dependence)."""
    try:
        ops, outputs = _traced_pass(model, target, occurrence, run_changed, prop)
        base = None if prop.single else _traced_pass(model, target, occurrence, run_base, prop)[0]
    except Exception:  # tracing is best effort: a model that cannot run under it is not named
        return None
    if base is not None and [o.name for o in base] != [o.name for o in ops]:
        return None
    for k, op in enumerate(ops):
        ref = base[k] if base is not None else None
        op.out_broken = any(
            prop.broken(ref.outputs[j] if ref else None, t) for j, t in enumerate(op.outputs)
        )
        op.in_broken = [
            prop.broken(ref.inputs[j] if ref else None, t) for j, t in enumerate(op.inputs)
        ]
    producer: dict[int, int] = {}
    feeds: dict[int, set[int]] = {}  # op -> ops whose broken outputs it consumed
    uses: dict[int, set[int]] = {}  # op -> ops whose outputs it consumed
    for k, op in enumerate(ops):
        uses[k] = {producer[i] for i in op.in_ids if i in producer}
        feeds[k] = {
            producer[i] for i, bad in zip(op.in_ids, op.in_broken, strict=False)
            if bad and i in producer
        }  # fmt: skip
        for i in op.out_ids:
            producer[i] = k
    last = [producer[i] for i in outputs if i in producer]
    path = _reach([k for k in last if ops[k].out_broken], feeds)
    # A mask that writes a small finite value leaves the masked entries in play (a softmax
    # gives them weight e^value): named first wherever it feeds the output.
    weak = [ops[k] for k in sorted(_reach(last, uses)) if _weak(ops[k])]
    if weak:
        return weak[0]
    sources = [ops[k] for k in sorted(path) if ops[k].out_broken and not any(ops[k].in_broken)]
    return sources[0] if sources else None


# A fill above this leaves a masked score in the softmax at e^fill of the others' weight or more
# (e^-30 = 1e-13, below float32's resolution of 1); -1e4, -1e9 and -inf do mask.
_WEAK_FILL = -30.0


def _weak(op: Op) -> bool:
    return op.masks and op.fill is not None and op.fill > _WEAK_FILL


def _reach(start: list[int], edges: dict[int, set[int]]) -> set[int]:
    seen: set[int] = set()
    frontier = list(start)
    while frontier:
        k = frontier.pop()
        if k not in seen:
            seen.add(k)
            frontier.extend(edges[k])
    return seen
