"""Same seed, same result, bit for bit; another seed, another result.

Karpathy's recipe fixes the random seed so that running the code twice gives the same outcome,
removing a factor of variation that otherwise hides every other bug. That only works if all the
randomness flows from the seeds: a generator seeded from the clock or the OS, or state carried
over from a previous run, makes a "seeded" run quietly irreproducible.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nnsanity._arguments import check_seed
from nnsanity._diagnosis import CONSISTENT, GENERIC, MEASURED, Cause, cause
from nnsanity._messages import Explanation, Msg, fail
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import preserved_globals
from nnsanity.seeding import seeded

_ATOMS = (bool, int, float, complex, str, bytes, type(None))


class _Fields(dict[str, Any]):
    """A snapshotted dataclass: its fields by name (shown as ``.name`` in paths)."""


def _snapshot(x: Any, path: str, seen: frozenset[int] = frozenset()) -> Any:  # noqa: PLR0911
    """A copy of ``x`` that later runs cannot change: tensors on the CPU, modules and optimizers
    as their state dicts, containers as plain dicts, lists and tuples, and any other object (a
    ``DynamicCache`` inside a ``ModelOutput``) as its attributes."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        x = x.to_dense() if x.layout != torch.strided else x
        return (x.dequantize() if x.is_quantized else x).to("cpu", copy=True)
    if isinstance(x, (torch.nn.Module, torch.optim.Optimizer)):
        return _snapshot(x.state_dict(), path, seen)
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, np.generic):
        return x.item() if x.dtype.kind in "biufc" else x
    if isinstance(x, _ATOMS):
        return x
    if id(x) in seen:  # a reference back to an object being copied: compare it once
        return f"<{type(x).__name__} seen above>"
    seen = seen | {id(x)}
    if isinstance(x, Mapping):
        return {k: _snapshot(v, f"{path}[{k!r}]", seen) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        items = [_snapshot(v, f"{path}[{i}]", seen) for i, v in enumerate(x)]
        return tuple(items) if isinstance(x, tuple) else items  # namedtuples become tuples
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        names = [f.name for f in dataclasses.fields(x)]
        return _Fields({k: _snapshot(getattr(x, k), f"{path}.{k}", seen) for k in names})
    if hasattr(x, "__dict__") and not callable(x):
        return _Fields({k: _snapshot(v, f"{path}.{k}", seen) for k, v in vars(x).items()})
    if getattr(type(x), "__eq__", None) is not object.__eq__ and not callable(x):
        return x  # a value that knows its own equality (torch.device, torch.dtype, an enum)
    raise TypeError(
        f"fn returned a value of type {type(x).__name__} at {path}, which cannot be compared "
        "between runs. Return tensors, modules, state dicts, arrays, numbers, or containers or "
        "objects holding them."
    )


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.dtype in (torch.float16, torch.float32, torch.float64):
            return str(value.numpy())  # the shortest text that round-trips in that dtype
        return repr(value.item())
    return repr(value.item() if isinstance(value, np.generic) else value)


def _value_differences(a: Any, b: Any, path: str) -> list[str]:
    """Where two snapshotted arrays differ; NaN equals NaN, 0.0 differs from -0.0. Reports the
    first differing element and the count, without listing every index (an 11M-element weight
    would take seconds and gigabytes)."""
    if isinstance(a, torch.Tensor):
        x, y = (torch.view_as_real(a), torch.view_as_real(b)) if a.is_complex() else (a, b)
        same = x == y
        if x.is_floating_point():
            same = (same & (x.signbit() == y.signbit())) | (x.isnan() & y.isnan())
        differ = ~(same.all(-1) if a.is_complex() else same)
        count = int(differ.sum())
        first = int(differ.flatten().to(torch.uint8).argmax()) if count else 0
    else:
        same = np.asarray(a == b)
        if a.dtype.kind in "fc":
            same = same | (np.isnan(a) & np.isnan(b))
        if a.dtype.kind == "f":
            same = same & (np.signbit(a) == np.signbit(b))
        differ = ~same
        count = int(differ.sum())
        first = int(differ.argmax()) if count else 0
    if not count:
        return []
    idx = tuple(int(i) for i in np.unravel_index(first, tuple(a.shape))) if a.shape else ()
    where = f"{path}[{', '.join(map(str, idx))}]" if idx else path
    share = f" ({count} of {math.prod(a.shape)} elements differ)" if count > 1 else ""
    return [f"{where}: {_show(a[idx])} vs {_show(b[idx])}{share}"]


def _differences(a: Any, b: Any, path: str) -> list[str]:  # noqa: PLR0911 - one return per kind
    """Every entry where two snapshots differ, in order, as 'path: first vs second'."""
    if type(a) is not type(b):
        return [f"{path}: a {type(a).__name__} vs a {type(b).__name__}"]
    if isinstance(a, (torch.Tensor, np.ndarray)):
        if a.dtype != b.dtype:
            return [f"{path}: dtype {a.dtype} vs {b.dtype}"]
        if a.shape != b.shape:
            return [f"{path}: shape {tuple(a.shape)} vs {tuple(b.shape)}"]
        return _value_differences(a, b, path)
    if isinstance(a, dict):
        if list(a) != list(b):
            return [f"{path}: keys {list(a)} vs {list(b)}"]
        form = "{}.{}" if isinstance(a, _Fields) else "{}[{!r}]"
        return [d for k in a for d in _differences(a[k], b[k], form.format(path, k))]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _differences(x, y, f"{path}[{i}]")
        ]
    if isinstance(a, float) and (math.isnan(a) and math.isnan(b)):
        return []
    if isinstance(a, float) and a == b and math.copysign(1, a) != math.copysign(1, b):
        return [f"{path}: {a!r} vs {b!r}"]
    return [] if a == b else [f"{path}: {_show(a)} vs {_show(b)}"]


@dataclass(frozen=True, kw_only=True)
class ReproducibilityResult(CheckResult):
    """Two runs of ``fn`` under ``seed`` and, unless skipped, one under ``other_seed``.

    ``differences`` lists the entries where the two same-seed results differ (at most 10,
    ``n_differences`` counts them all); ``same_under_other_seed`` is None when not checked.
    """

    other_seed: int | None
    deterministic: bool
    differences: tuple[str, ...]
    n_differences: int
    draws_randomness: bool  # fn advanced a global RNG (torch, CUDA, numpy or random)
    same_under_other_seed: bool | None  # None: not checked (or fn drew no random numbers)
    carried: tuple[str, ...] = ()  # modules fn reaches from outside and changed in place

    @property
    def passed(self) -> bool:
        return not self.differences and not self.same_under_other_seed


def _held(fn: Callable[[], Any]) -> list[tuple[str, Any]]:
    """What fn holds from outside itself, by the name fn knows it: a partial's arguments, a
    bound method's object, its closure cells and the globals it names (inspect.getclosurevars),
    its default arguments."""
    held: list[tuple[str, Any]] = []
    if isinstance(fn, functools.partial):
        held += [(f"partial argument {i}", a) for i, a in enumerate(fn.args)]
        held += list(fn.keywords.items())
        fn = fn.func
    if inspect.ismethod(fn):
        held.append(("self", fn.__self__))
        fn = fn.__func__
    if inspect.isfunction(fn):
        names = inspect.getclosurevars(fn)
        held += [*names.nonlocals.items(), *names.globals.items()]
        held += [(f"default argument {i}", d) for i, d in enumerate(fn.__defaults__ or ())]
    return held


def _reachable_modules(fn: Callable[[], Any]) -> dict[str, torch.nn.Module]:
    """The modules among what fn holds, and in the tuples, lists and dicts it holds."""
    found: dict[str, torch.nn.Module] = {}

    def add(name: str, obj: Any, depth: int) -> None:
        if isinstance(obj, torch.nn.Module):
            found.setdefault(name, obj)
        elif depth < 2 and isinstance(obj, (tuple, list)):
            for i, item in enumerate(obj):
                add(f"{name}[{i}]", item, depth + 1)
        elif depth < 2 and isinstance(obj, dict):
            for key, item in obj.items():
                add(f"{name}[{key!r}]", item, depth + 1)

    for name, obj in _held(fn):
        add(name, obj, 0)
    return found


def _versions(modules: dict[str, torch.nn.Module]) -> dict[str, int]:
    """Per module, the sum of its tensors' in-place version counters: an optimizer step (or
    any in-place write) raises it."""
    return {
        name: sum(t._version for t in (*m.parameters(), *m.buffers()))
        for name, m in modules.items()
    }


def _rng_states() -> list[Any]:
    numpy_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    states: list[Any] = [torch.get_rng_state(), *numpy_state, random.getstate()]
    if torch.cuda.is_initialized():
        states += torch.cuda.get_rng_state_all()
    return states


def _same_states(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, y)
        if isinstance(x, torch.Tensor)
        else np.array_equal(x, y)
        if isinstance(x, np.ndarray)
        else x == y
        for x, y in zip(a, b, strict=True)
    )


def measure_reproducibility(
    fn: Callable[[], Any],
    *,
    seed: int = 0,
    other_seed: int | None = None,
    deterministic: bool = False,
    check_different: bool = True,
) -> ReproducibilityResult:
    """Run ``fn()`` twice under ``seed`` (and once under ``other_seed``) and compare results."""
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}.")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none
        signature = None
    if signature is not None:
        try:
            signature.bind()
        except TypeError as e:
            raise TypeError(
                f"fn must be callable with no arguments ({e}); wrap it, e.g. "
                "lambda: train(make_model(), steps=20)."
            ) from None
    seed = check_seed(seed)
    other_seed = check_seed((seed + 1) % 2**64 if other_seed is None else other_seed, "other_seed")
    if other_seed == seed:
        raise ValueError(f"other_seed must differ from seed, both are {seed}.")
    for name, flag in (("deterministic", deterministic), ("check_different", check_different)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}.")

    drew: list[bool] = []
    outside = _reachable_modules(fn)
    versions = _versions(outside)

    def run(s: int) -> Any:
        with seeded(s):
            before = _rng_states()
            result = fn()
            drew.append(not _same_states(before, _rng_states()))
        if result is None:  # two Nones are equal whatever fn did: nothing to compare
            raise TypeError(
                "fn returned nothing comparable (None): return what it computed, e.g. the "
                "losses or the trained model, so that two runs can be compared."
            )
        return _snapshot(result, "result")

    with preserved_globals():  # the RNG states and the deterministic-algorithms flag
        if deterministic:
            torch.use_deterministic_algorithms(True)
        first, second = run(seed), run(seed)
        differences = _differences(first, second, "result")
        same_other = None
        # A function that draws no random numbers (a forward pass without dropout) has nothing
        # the seed could change: its sameness under another seed says nothing.
        if check_different and not differences and any(drew):
            same_other = not _differences(first, run(other_seed), "result")
    r = ReproducibilityResult(
        seed=seed,
        other_seed=other_seed if check_different else None,
        deterministic=deterministic,
        differences=tuple(differences[:10]),
        n_differences=len(differences),
        draws_randomness=any(drew),
        same_under_other_seed=same_other,
        carried=tuple(
            f"{name} ({type(outside[name]).__name__})"
            for name, v in _versions(outside).items()
            if v != versions[name]
        ),
    )
    return diagnosed(r, _diagnose)


def assert_reproducible(
    fn: Callable[[], Any],
    *,
    seed: int = 0,
    other_seed: int | None = None,
    deterministic: bool = False,
    check_different: bool = True,
    msg: Msg = None,
) -> ReproducibilityResult:
    """Assert that ``fn()`` gives bit-identical results under the same seed, and not otherwise.

    ``fn`` takes no arguments and is called inside :func:`seeded` (torch, CUDA, numpy and
    ``random`` seeded with ``seed``), twice; the two results must be identical bit for bit:
    tensors and arrays (dtype, shape, values, NaN positions), modules and optimizers (their
    state dicts), numbers, and containers or objects holding them (a ``ModelOutput`` with its
    cache). When fn draws random numbers from a global generator, a third call under
    ``other_seed`` (default ``seed + 1``) must give a different result, or fn ignores the seed
    (``check_different=False`` skips that); a fn that draws none (a forward pass without
    dropout) passes with ``draws_randomness=False``, since no seed can change it.
    ``deterministic=True`` runs under ``torch.use_deterministic_algorithms(True)``. All RNG
    states and the flag are restored.

    Proves: fn's randomness all flows from the global seeds, on this machine and these versions.
    Does NOT prove: the same results on other hardware, library versions or thread counts.
    """
    __tracebackhide__ = True
    r = measure_reproducibility(
        fn, seed=seed, other_seed=other_seed, deterministic=deterministic,
        check_different=check_different,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _diagnose(r: ReproducibilityResult) -> list[Cause]:
    if r.differences:
        carried = cause(
            "carried_state",
            "state carried between calls: a model, optimizer or data iterator created outside fn "
            "keeps training where the last call stopped; build everything inside fn",
            MEASURED if r.carried else GENERIC,
            evidence=(f"changed in place by fn, held from outside it: {', '.join(r.carried)}",)
            if r.carried else (),
            where=r.carried[0] if r.carried else None,
        )  # fmt: skip
        return [
            cause("unseeded_randomness", "unseeded randomness: torch.Generator().seed(), "
                  "np.random.default_rng() without a seed, os.urandom, time or uuid in the "
                  "model, data or loop; draw from the global RNGs or seed your generators from "
                  "them"),
            carried,
            cause("nondeterministic_kernels", "nondeterministic kernels (CUDA atomics in "
                  "scatter/index_add, cuDNN autotuning): deterministic=True makes torch raise at "
                  "the culprit"),
        ]  # fmt: skip
    return [
        cause("fn_seeds_itself", "fn seeds itself (torch.manual_seed, a fixed Generator or a "
              "model factory with a fixed seed inside fn overrides the seed set here): let fn "
              "use the seed it is given", CONSISTENT,
              evidence=(f"the result under seed {r.other_seed} is bit-identical",)),
        cause("constant_generator", "fn draws its random numbers from a generator of its own, "
              "seeded with a constant: seed it from the global RNG"),
    ]  # fmt: skip


def _explain(r: ReproducibilityResult) -> Explanation:
    if r.differences:
        more = r.n_differences - len(r.differences)
        return Explanation(
            header="Not reproducible!",
            lines=[
                f"Two runs under seed {r.seed} differ at {len(r.differences)}"
                f"{f' (+{more})' if more else ''} entries (bit-identical required):",
                *(f"  {d}" for d in r.differences[:5]),
                *(
                    [f"Changed in place by fn, held from outside it: {', '.join(r.carried)}"]
                    if r.carried
                    else []
                ),
            ],
        )
    return Explanation(
        header="fn ignores the seed!",
        lines=[f"Result under seed {r.other_seed}: bit-identical to the one under seed {r.seed}"],
        relax="check_different=False, for an fn that is meant to be deterministic.",
    )
