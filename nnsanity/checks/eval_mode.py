"""Eval mode does what ``model.eval()`` promises, with what ``model.train()`` collected.

``model.eval()`` switches off the two things that make training differ from inference: dropout
(and other random regularisers) and BatchNorm's batch statistics, replaced by the running
statistics that train-mode forwards accumulate. Karpathy lists forgetting to toggle train/eval
mode among the most common neural-net mistakes; a model can also get the toggle half wrong on its
own: ``F.dropout(x, p)`` (training defaults to True), attention dropout that ignores
``self.training``, BatchNorm whose running statistics never move (``momentum=0``, kept in eval
mode while training) or are not there to use (``track_running_stats=False``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from nnsanity._arguments import check_number
from nnsanity._diagnosis import CONSISTENT, MEASURED, Cause, Place
from nnsanity._harness import Harness
from nnsanity._localisation import Property, locate, whole
from nnsanity._messages import Explanation, Msg, fail, names, up_to
from nnsanity._perturbation import MAX_DEPENDENCE
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import preserved_module
from nnsanity._structures import select_output, tensors_in
from nnsanity._units import deterministic_mode
from nnsanity.seeding import seed_torch

# PyTorch's running = (1 - momentum) x running + momentum x batch: from 0.5 on the last batch
# outweighs all history. PyTorch's default is 0.1; TensorFlow/Keras write the weight of the old
# value, 0.99 by default (0.9-0.999 in use), which in PyTorch keeps 1% of the history.
LAST_BATCH_MOMENTUM = 0.5


@dataclass(frozen=True, kw_only=True)
class EvalModeResult(CheckResult):
    """Two eval-mode forwards compared, and each BatchNorm's running statistics followed.

    ``difference`` is the largest difference between two eval-mode forwards of the batch,
    relative to the largest output (0 for a deterministic eval mode). BatchNorm layers are named
    by the problem found with them (empty tuples when healthy).
    """

    max_difference: float  # the bound on ``difference``
    difference: float
    where: Place | None  # the first module (and op) whose output differs though its inputs do not
    train_in_eval: tuple[str, ...]  # modules in train mode during the eval-mode forward
    batchnorms: int  # BatchNorm layers checked (exempt ones left out)
    stats_updated_in_eval: tuple[str, ...]  # running statistics changed by an eval forward
    stats_unused_in_eval: tuple[str, ...]  # eval output does not change with them
    no_running_stats: tuple[str, ...]  # track_running_stats=False: batch statistics in eval
    stats_frozen: tuple[str, ...]  # running statistics did not move in a train-mode forward
    eval_in_train: tuple[str, ...]  # of those, the ones in eval mode during the train forward
    zero_momentum: tuple[str, ...]  # of those, the ones with momentum=0
    # momentum >= LAST_BATCH_MOMENTUM: TensorFlow's convention (the weight of the old value)
    # read as PyTorch's (the weight of the new batch): the running statistics are the last batch's
    last_batch_momentum: tuple[str, ...] = ()
    # eval-vs-train gap on one half of the batch after 20 train forwards alternating the halves
    # (ending on the other), relative to the output scale: at the layers' momentum, and at 0.1
    momentum_gap: tuple[float, float] | None = None
    momentum_of: tuple[tuple[str, float], ...] = ()  # those layers' momentum

    @property
    def problems(self) -> tuple[str, ...]:
        """The problems found, most fundamental first (the first is the one reported)."""
        found = [p for p in _PROBLEMS if getattr(self, p)]
        if self.difference > self.max_difference:
            found.insert(0, "not_deterministic")
        return tuple(found)

    @property
    def passed(self) -> bool:
        return not self.problems


def _patterns(exempt: Any, norms: dict[str, _BatchNorm]) -> tuple[str, ...]:
    patterns = (exempt,) if isinstance(exempt, str) else exempt
    if not isinstance(patterns, Iterable) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"exempt must be a glob or a list of globs over BatchNorm module names, e.g. "
            f"exempt=['backbone.*'], got {exempt!r}."
        )
    patterns = tuple(patterns)
    for pat in patterns:
        if not any(fnmatchcase(n, pat) for n in norms):
            raise ValueError(
                f"exempt pattern {pat!r} matches no BatchNorm layer; the model's are "
                f"{names(list(norms)) or 'none'}."
            )
    return patterns


def _floats(outputs: Any, output: Any) -> list[torch.Tensor]:
    found = [select_output(outputs, output)[0]] if output is not None else tensors_in(outputs)
    return [o.detach().double() for o in found if o.is_floating_point()]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest |a - b| over the outputs, relative to the largest finite |a|; NaN == NaN."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=False)):
        return float("inf")  # the outputs' structure changed from one call to the next
    biggest, scale = 0.0, torch.finfo(torch.float64).tiny
    for x, y in zip(a, b, strict=True):
        if not x.numel():
            continue
        d = (x - y).abs().nan_to_num(nan=float("inf"))
        d[x.isnan() & y.isnan()] = 0.0
        biggest = max(biggest, float(d.max()))
        scale = max(scale, float(x.abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).max()))
    return biggest / scale


def _localise(h: Harness, bound: float) -> Place | None:
    """The first module whose output differs between two eval forwards while its inputs do
    not: the randomness enters there (in it, or in an op of its own forward)."""
    axis, region = whole()
    prop = Property(region, axis, bound)
    return locate(h.model, h.forward, h.forward, prop)


def _stats(m: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor] | None:
    if m.running_mean is None or m.running_var is None:
        return None
    return m.running_mean.detach().clone(), m.running_var.detach().clone()


def _moved(m: _BatchNorm, before: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    now = _stats(m)
    if before is None or now is None:
        return False
    return not (torch.equal(before[0], now[0]) and torch.equal(before[1], now[1]))


@contextmanager
def _watch_norms(
    norms: dict[str, _BatchNorm], seen: dict[str, bool], inputs: dict[str, torch.Tensor]
) -> Iterator[None]:
    """Record each BatchNorm's mode when it runs, and its first input."""
    handles = []
    for name, m in norms.items():

        def pre(module: torch.nn.Module, args: Any, name: str = name) -> None:
            seen.setdefault(name, module.training)
            if args and isinstance(args[0], torch.Tensor) and name not in inputs:
                inputs[name] = args[0].detach().clone()

        handles.append(m.register_forward_pre_hook(pre))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _ignores_stats(m: _BatchNorm, x: torch.Tensor) -> bool:
    """Whether the layer's eval output stays the same when its running statistics change.

    The affine weight is set to 1 for the test (restored after): a zero-initialised one (timm's
    ``zero_init_last``) hides the statistics from the output by design."""
    saved = _stats(m)
    assert saved is not None and m.running_mean is not None and m.running_var is not None
    weight = m.weight.detach().clone() if m.weight is not None else None
    with torch.no_grad():
        if m.weight is not None:
            m.weight.fill_(1.0)
        before = m(x)
        m.running_mean.add_(saved[1].sqrt().clamp_min(1.0))
        m.running_var.mul_(4.0)
        after = m(x)
        m.running_mean.copy_(saved[0])
        m.running_var.copy_(saved[1])
        if m.weight is not None and weight is not None:
            m.weight.copy_(weight)
    return isinstance(before, torch.Tensor) and _same(before.double(), after.double())


def _momentum_gap(h: Harness, flagged: list[_BatchNorm]) -> tuple[float, float] | None:
    """The eval-vs-train gap on half B of the batch after 20 train forwards alternating its
    halves and ending on half A, at the layers' momentum and with it set to PyTorch's 0.1
    (dropout off in both; None for a batch under 4 samples or one that cannot be halved)."""
    n = h.batch_size
    if n < 4:
        return None

    def half(lo: int, hi: int) -> Any:
        return h.map_data(lambda _, t: t[lo:hi] if t.dim() and t.shape[0] == n else t)

    a, b = half(0, n // 2), half(n // 2, n)

    def gap(momentum: float | None) -> float:
        saved = [m.momentum for m in flagged]
        with preserved_module(h.model), deterministic_mode(h.model), torch.no_grad():
            try:
                for m in flagged:
                    m.momentum = m.momentum if momentum is None else momentum
                for i in range(20):
                    seed_torch(h.seed)
                    h.forward(a if i % 2 else b)
                h.model.eval()
                evaluated = _floats(h.forward(b), h.output)
                with deterministic_mode(h.model):
                    seed_torch(h.seed)
                    trained = _floats(h.forward(b), h.output)
            finally:
                for m, v in zip(flagged, saved, strict=True):
                    m.momentum = v
        return _difference(trained, evaluated)

    try:
        return gap(None), gap(0.1)
    except (ValueError, TypeError, RuntimeError):  # a batch whose structure does not halve
        return None


def measure_eval_mode(
    model: torch.nn.Module,
    batch: Any,
    *,
    exempt: str | Iterable[str] = (),
    max_difference: float = MAX_DEPENDENCE,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
) -> EvalModeResult:
    """Compare two eval forwards and follow the BatchNorm statistics; see the assert."""
    bound = check_number(max_difference, "max_difference", low=0, what="a number >= 0")
    h = Harness(model, batch, seed=seed, output=output, unpack=unpack, needs_loss=False)
    every = {n: m for n, m in h.model.named_modules() if isinstance(m, _BatchNorm)}
    patterns = _patterns(exempt, every)
    norms = {n: m for n, m in every.items() if not any(fnmatchcase(n, p) for p in patterns)}
    modes: dict[str, bool] = {}
    eval_seen: dict[str, bool] = {}
    inputs: dict[str, torch.Tensor] = {}
    with h.isolated(train=False):
        before = {n: _stats(m) for n, m in norms.items()}
        # The two passes compared run without hooks: hooks turn PyTorch's transformer fast
        # path off, and a hooked pass differs from an unhooked one by float32 rounding.
        seed_torch(h.seed)
        with torch.no_grad():
            first = _floats(h.forward(), h.output)
            second = _floats(h.forward(), h.output)
        difference = _difference(first, second)
        where = _localise(h, bound) if difference > bound else None
        carried = h.carried_state() if difference > bound else ()

        def noter(name: str) -> Any:
            def note(module: torch.nn.Module, args: Any) -> None:
                if module.training:
                    modes[name] = True

            return note

        handles = [m.register_forward_pre_hook(noter(n)) for n, m in h.model.named_modules()]
        try:
            with torch.no_grad(), _watch_norms(norms, eval_seen, inputs):
                h.forward()
        finally:
            for handle in handles:
                handle.remove()
        updated = tuple(n for n, m in norms.items() if _moved(m, before[n]))
        unused = tuple(
            n
            for n, m in norms.items()
            if n in inputs and before[n] is not None and n not in updated
            and _ignores_stats(m, inputs[n])
        )  # fmt: skip
    train_seen: dict[str, bool] = {}
    with h.isolated(train=True):
        start = {n: _stats(m) for n, m in norms.items()}
        with torch.no_grad(), _watch_norms(norms, train_seen, {}):
            h.forward()
        frozen = tuple(
            n for n, m in norms.items()
            if n in train_seen and start[n] is not None and not _moved(m, start[n])
        )  # fmt: skip
    last = tuple(
        n
        for n, m in norms.items()
        if n in train_seen and m.momentum is not None and m.momentum >= LAST_BATCH_MOMENTUM
    )
    r = EvalModeResult(
        seed=h.seed,
        carried_state=carried,
        max_difference=bound,
        difference=difference,
        where=where,
        train_in_eval=tuple(modes),
        batchnorms=len(norms),
        stats_updated_in_eval=updated,
        stats_unused_in_eval=unused,
        no_running_stats=tuple(n for n in norms if n in eval_seen and before[n] is None),
        stats_frozen=frozen,
        eval_in_train=tuple(n for n in frozen if not train_seen[n]),
        zero_momentum=tuple(n for n in frozen if norms[n].momentum == 0),
        last_batch_momentum=last,
        momentum_of=tuple((n, float(norms[n].momentum or 0.0)) for n in last),
        momentum_gap=_momentum_gap(h, [norms[n] for n in last]) if last else None,
    )
    return diagnosed(r, _diagnose)


def assert_eval_mode(
    model: torch.nn.Module,
    batch: Any,
    *,
    exempt: str | Iterable[str] = (),
    max_difference: float = MAX_DEPENDENCE,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> EvalModeResult:
    """Assert that eval mode is deterministic and BatchNorm's running statistics work.

    Two eval-mode forwards of the batch (under ``torch.no_grad()``, without reseeding between
    them) must agree to ``max_difference`` of the output scale; if they do not, two more with
    every module's inputs and outputs recorded name the innermost module whose output differs
    while its inputs do not, where the randomness enters. Every BatchNorm layer
    (``nn.BatchNorm1d/2d/3d``, ``SyncBatchNorm`` and subclasses such as timm's
    ``BatchNormAct2d``) that runs must have running statistics (``track_running_stats=True``),
    leave them unchanged in an eval forward, use them there (its output changes when they do),
    and move them in one train-mode forward. ``exempt`` names (globs) the BatchNorm layers whose
    statistics are fixed or absent on purpose: frozen for fine-tuning, batch statistics at test
    time. A BatchNorm layer with ``momentum >= 0.5`` fails as TensorFlow's convention read as
    PyTorch's (Keras' 0.99 is PyTorch's 0.01): the running statistics become the last batch's,
    and the report gives the eval-vs-train gap on one half of the batch after 20 train forwards
    alternating its halves, at the layer's momentum and at 0.1 (on one batch of i.i.d. samples
    the two are close, 0.036 and 0.034 on a small CNN; the gap grows with how much batches
    differ, which one batch cannot show, so the verdict rests on the setting).

    The bound 1e-5 is the one of the other dependency checks (``_perturbation.MAX_DEPENDENCE``):
    on CPU two unhooked eval forwards are bit-identical (0.0 on every model of the zoo and of
    the real-architecture zoo; a hooked and an unhooked one are not, as hooks turn PyTorch's
    transformer fast path off, so both compared passes run without hooks), GPU kernels with
    atomic additions differ by float32 rounding (about 1e-7 of the scale), and dropout left on
    moves the outputs by 0.06 to 0.9 of their scale (measured with the dropout of BERT 0.062,
    GPT-2 0.10, the log-softmax CNN 0.17, the dropout CNN 0.32, T5 0.64 and ViT-Tiny 0.84 forced
    on in eval mode; the tests' planted bugs 0.47 to 0.91): four orders of magnitude apart.

    Proves: for this batch, eval mode draws no random numbers that reach the outputs, and every
    BatchNorm layer that runs collects running statistics in train mode and normalises with them
    in eval mode. Does not prove: that your training loop calls ``model.train()`` and
    ``model.eval()`` at the right places, that the statistics collected match the data (a
    frozen backbone's may not), nor anything about normalisation layers that are not BatchNorm
    (torchvision's ``FrozenBatchNorm2d`` has no training behaviour to check).

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_eval_mode(
        model, batch, exempt=exempt, max_difference=max_difference, output=output, unpack=unpack,
        seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _train_in_eval(r: EvalModeResult) -> Cause:
    return Cause(
        id="train_mode_in_eval",
        summary=f"modules ran in train mode during the eval forward ({names(r.train_in_eval)})",
        remedy="a train()/eval() override must pass the mode on to its children; do not call "
        "self.train() in forward",
        evidence=("their .training was True inside model.eval()",),
        where=r.train_in_eval[0],
        support=MEASURED,
    )


_DROPOUT = Cause(
    id="functional_dropout",
    summary="F.dropout(x, p) in a forward: its training argument defaults to True, so it drops "
    "in eval mode too",
    remedy="pass training=self.training, or use an nn.Dropout module",
)
_ATTN_DROPOUT = Cause(
    id="attention_dropout",
    summary="attention dropout that ignores self.training",
    remedy="pass F.scaled_dot_product_attention dropout_p=self.p if self.training else 0.0 "
    "(and F.dropout(attn, p, self.training))",
)
_SAMPLING = Cause(
    id="sampling_in_forward",
    summary="sampling in forward (noise injection, a VAE's reparameterisation, random masking)",
    remedy="draw only when self.training and use the mean in eval mode",
)
_RANDOM_OPS = ("rand", "randn", "randint", "rand_like", "randn_like", "bernoulli", "normal",
               "normal_", "uniform_", "multinomial", "randperm", "exponential_")  # fmt: skip
_DROPOUT_OPS = ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                "feature_alpha_dropout")  # fmt: skip

# Each BatchNorm problem, in the order it is reported: (header, causes).
_PROBLEMS: dict[str, tuple[str, tuple[Cause, ...]]] = {
    "stats_updated_in_eval": (
        "{n} BatchNorm layer{s} changed {their} running statistics in eval mode!",
        (
            Cause(
                id="batchnorm_train_mode_in_eval",
                summary="the layer runs in train mode inside an eval forward",
                remedy="make sure model.eval() reaches it (no train() override that stops it)",
            ),
            Cause(
                id="functional_batch_norm",
                summary="F.batch_norm(..., training=True) called directly in forward",
                remedy="pass training=self.training",
            ),
        ),
    ),
    "stats_unused_in_eval": (
        "{n} BatchNorm layer{s} {ignore} {their} running statistics in eval mode!",
        (
            Cause(
                id="batchnorm_ignores_running_stats",
                summary="a BatchNorm subclass whose forward always normalises with the batch's "
                "statistics",
                remedy="use the running statistics when not self.training",
            ),
        ),
    ),
    "no_running_stats": (
        "{n} BatchNorm layer{s} {have} no running statistics (track_running_stats=False)!",
        (
            Cause(
                id="batchnorm_batch_statistics",
                summary="track_running_stats=False makes eval mode normalise with the batch's own "
                "statistics, so a sample's output depends on the batch it is evaluated with (and "
                "a batch of one fails)",
                remedy="use the default track_running_stats=True",
                support=MEASURED,
            ),
            Cause(
                id="test_time_batch_statistics",
                summary="batch statistics at test time on purpose (test-time adaptation)",
                remedy="list the layer in exempt=",
            ),
        ),
    ),
    "stats_frozen": (
        "{n} BatchNorm layer{s} did not update {their} running statistics in train mode!",
        (
            Cause(
                id="batchnorm_zero_momentum",
                summary="momentum=0: the running statistics keep their initial values (mean 0, "
                "variance 1) and eval mode normalises with them",
                remedy="use the default momentum=0.1",
            ),
            Cause(
                id="batchnorm_eval_in_train",
                summary="the layer stays in eval mode while the model trains: a train() override "
                "that calls .eval() on it, or .eval() called in forward",
                remedy="let model.train() reach it",
            ),
            Cause(
                id="frozen_on_purpose",
                summary="frozen on purpose for fine-tuning",
                remedy="list the layer in exempt=",
            ),
        ),
    ),
    "last_batch_momentum": (
        "{n} BatchNorm layer{s} keep{s_verb} only the last batch's running statistics "
        "(momentum in TensorFlow's convention)!",
        (
            Cause(
                id="batchnorm_momentum_tf_convention",
                summary="BatchNorm momentum in TensorFlow's convention: PyTorch's momentum is "
                "the weight of the new batch (running = (1 - m) x running + m x batch), so 0.99 "
                "makes the running statistics the last batch's and eval accuracy drops",
                remedy="use 1 - the TensorFlow value (0.99 -> 0.01), or the default 0.1",
                support=MEASURED,
            ),
        ),
    ),
}


def _nondeterministic_causes(r: EvalModeResult) -> list[Cause]:
    w = r.where
    attention = w is not None and any(x in w.module.lower() for x in ("attn", "atten"))
    causes = [_ATTN_DROPOUT, _DROPOUT] if attention else [_DROPOUT, _ATTN_DROPOUT]
    causes.append(_SAMPLING)
    if r.train_in_eval:
        causes.insert(0, _train_in_eval(r))
    if w is None:
        return causes
    at, o = w.short, w.operation
    first = (
        "the first module whose output differs between two eval forwards while its inputs do not"
    )
    if o is not None and o.name in _DROPOUT_OPS:
        causes.insert(0, replace(_DROPOUT, evidence=(first,), where=at, support=MEASURED))
    elif o is not None and o.name == "scaled_dot_product_attention":
        causes.insert(0, replace(_ATTN_DROPOUT, evidence=(first,), where=at, support=MEASURED))
    elif o is not None and o.name in _RANDOM_OPS:
        causes.insert(0, replace(_SAMPLING, evidence=(first,), where=at, support=MEASURED))
    elif attention:
        causes.insert(0, replace(_ATTN_DROPOUT, evidence=(first,), where=at, support=CONSISTENT))
    else:
        causes.insert(0, Cause(
            id="random_in_eval", summary=f"{w.label} draws random numbers in eval mode",
            remedy="draw only when self.training", evidence=(first,), where=at,
            support=CONSISTENT,
        ))  # fmt: skip
    return causes


def _diagnose(r: EvalModeResult) -> list[Cause]:
    problem = r.problems[0]
    if problem == "not_deterministic":
        return _nondeterministic_causes(r)
    found: tuple[str, ...] = getattr(r, problem)
    causes = [replace(c, where=found[0]) for c in _PROBLEMS[problem][1]]
    if problem == "stats_frozen":
        by_id = {c.id: c for c in causes}
        if r.zero_momentum:
            by_id["batchnorm_zero_momentum"] = replace(
                by_id["batchnorm_zero_momentum"], support=MEASURED, where=r.zero_momentum[0],
                evidence=(f"momentum=0 on {names(r.zero_momentum)}",),
            )  # fmt: skip
        if r.eval_in_train:
            by_id["batchnorm_eval_in_train"] = replace(
                by_id["batchnorm_eval_in_train"], support=MEASURED, where=r.eval_in_train[0],
                evidence=(f"in eval mode during the train forward: {names(r.eval_in_train)}",),
            )  # fmt: skip
        causes = list(by_id.values())
    if problem == "last_batch_momentum":
        evidence = [f"momentum >= {LAST_BATCH_MOMENTUM:g} on {names(r.last_batch_momentum)}"]
        if r.momentum_gap is not None:
            evidence.append(
                f"eval-vs-train gap on a held-out half: {r.momentum_gap[0]:.3g} of the output "
                f"scale at this momentum, {r.momentum_gap[1]:.3g} at 0.1"
            )
        causes = [replace(causes[0], evidence=tuple(evidence))]
    if problem in ("stats_updated_in_eval", "stats_unused_in_eval") and r.train_in_eval:
        causes.insert(0, _train_in_eval(r))
    return causes


def _nondeterministic(r: EvalModeResult) -> Explanation:
    size = "inf (the outputs' shapes differ)" if r.difference == float("inf") else r.difference
    return Explanation(
        header="Two eval-mode forwards of the same batch differ!",
        lines=[
            "Largest difference between two eval forwards: "
            + up_to(f"{size:.3g}" if isinstance(size, float) else size, f"{r.max_difference:g}")
            + " of the output scale",
        ],
        where=r.where or "not found (the modules called differ between forwards)",
        relax="max_difference= (larger); output= judges one output only.",
    )


def _explain(r: EvalModeResult) -> Explanation:
    problem = r.problems[0]
    if problem == "not_deterministic":
        return _nondeterministic(r)
    header = _PROBLEMS[problem][0]
    found: tuple[str, ...] = getattr(r, problem)
    lines = [f"BatchNorm layers: {names(found)} (of {r.batchnorms} checked)"]
    if problem == "last_batch_momentum":
        lines[0] = "BatchNorm layers: " + ", ".join(
            f"'{n}' (momentum={dict(r.momentum_of)[n]:g})" for n in found
        )
        if r.momentum_gap is not None:
            lines.append(
                "Eval-vs-train gap on a held-out half of the batch after 20 train forwards: "
                f"{r.momentum_gap[0]:.3g} of the output scale (at momentum 0.1: "
                f"{r.momentum_gap[1]:.3g})"
            )
    if problem == "stats_frozen":
        lines.append(f"With momentum=0: {names(r.zero_momentum) or 'none'}")
        lines.append(f"In eval mode during the train forward: {names(r.eval_in_train) or 'none'}")
    return Explanation(
        header=header.format(
            n=len(found),
            s="" if len(found) == 1 else "s",
            their="its" if len(found) == 1 else "their",
            ignore="ignores" if len(found) == 1 else "ignore",
            have="has" if len(found) == 1 else "have",
            s_verb="s" if len(found) == 1 else "",
        ),
        lines=lines,
        relax="exempt= [glob, ...] naming the BatchNorm layers that behave so on purpose.",
    )
