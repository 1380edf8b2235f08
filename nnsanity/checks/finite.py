"""No NaN or Inf anywhere in one training step: parameters, outputs, loss and gradients.

A NaN spreads to everything downstream of it, so the useful answer is where it appeared first:
the check walks the step in the order values are computed and names the first offender.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from nnsanity._arguments import LossFn
from nnsanity._diagnosis import CONSISTENT, MEASURED, Cause, Place
from nnsanity._harness import Harness
from nnsanity._localisation import Property, locate, whole
from nnsanity._messages import Explanation, Msg, fail, names
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import autograd
from nnsanity._structures import tensors_in
from nnsanity.seeding import seed_torch

Stage = Literal[
    "parameter", "buffer", "input", "output", "loss", "gradient", "eval input", "eval output",
    "eval loss",
]  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class FiniteResult(CheckResult):
    """Where the first NaN/Inf appeared (``stage`` is None when everything is finite)."""

    stage: Stage | None
    name: str | None  # parameter/buffer name, or the module whose output (gradient) it is
    count: int  # NaN/Inf values in that tensor
    numel: int
    loss: float  # NaN when the loss could not be computed finitely
    nonfinite_grads: tuple[str, ...] = ()  # every parameter with a NaN/Inf gradient
    after: str | None = None  # the last module whose output was finite, for input/output
    overflow_dtype: str | None = None  # a 16-bit dtype whose non-finite values are all +-inf
    # the first module (and op) whose output is not finite while its inputs are
    where: Place | None = None

    @property
    def passed(self) -> bool:
        return self.stage is None


def _bad(tensors: list[torch.Tensor]) -> tuple[int, int]:
    """(non-finite values, values) over the floating-point tensors."""
    floats = [t.detach() for t in tensors if t.is_floating_point() or t.is_complex()]
    return sum(int((~torch.isfinite(t)).sum()) for t in floats), sum(t.numel() for t in floats)


def _overflow(tensors: list[torch.Tensor]) -> str | None:
    """The dtype, when the non-finite values are all +-inf in a 16-bit float tensor: the sign
    of an overflow (float16 tops out at 65504), not of a log or 0/0, which give NaN."""
    for t in tensors:
        low = t.dtype in (torch.float16, torch.bfloat16)
        if low and not torch.isfinite(t).all() and not torch.isnan(t).any():
            return str(t.dtype).removeprefix("torch.")
    return None


def _label(name: str, m: torch.nn.Module) -> str:
    return f"'{name}' ({type(m).__name__})" if name else f"{type(m).__name__} (the model)"


def _wrap(forward: Any, pre: Any, post: Any) -> Any:
    """``forward`` with the pre-hook ``pre`` and the hook ``post`` called around it."""

    def watched(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        pre(module, args)
        out = forward(*args, **kwargs)
        post(module, args, out)
        return out

    return watched


class _Watch:
    """Forward hooks that record the first module whose input or output is not finite, and
    gradient hooks that record the first module output whose gradient is not."""

    def __init__(self) -> None:
        self.first_bad: tuple[Stage, str, int, int] | None = None  # in forward's order
        self.last_good: str | None = None  # the latest module whose output was finite
        self.first_grad: tuple[str, int, int] | None = None  # in backward's order
        self.overflow_dtype: str | None = None  # first_bad's, when it looks like an overflow

    def on_input(self, label: str) -> Any:
        def hook(_: torch.nn.Module, args: Any) -> None:
            count, numel = _bad(tensors_in(args))
            if count and self.first_bad is None:  # made by a functional op in the parent
                self.first_bad = ("input", label, count, numel)

        return hook

    def on_output(self, label: str) -> Any:
        def hook(_: torch.nn.Module, args: Any, output: Any) -> None:
            tensors = tensors_in(output)
            count, numel = _bad(tensors)
            if count and self.first_bad is None:
                self.first_bad = ("output", label, count, numel)
                self.overflow_dtype = _overflow(tensors)
            elif self.first_bad is None:
                self.last_good = label
            for t in tensors:
                if t.requires_grad:
                    t.register_hook(self.on_grad(label))

        return hook

    def on_grad(self, label: str) -> Any:
        def hook(grad: torch.Tensor) -> None:
            count, numel = _bad([grad])
            if count and self.first_grad is None:
                self.first_grad = (label, count, numel)

        return hook

    @contextmanager
    def wrapped(self, model: torch.nn.Module) -> Iterator[None]:
        """The same watch by wrapping each module's forward instead of hooking it: hooks turn
        off PyTorch's transformer fast path, whose output is the one to watch in eval mode."""
        wrapped = []
        for n, m in model.named_modules():
            own = m.__dict__.get("forward")  # an instance attribute someone set: put it back
            forward = _wrap(m.forward, self.on_input(_label(n, m)), self.on_output(_label(n, m)))
            try:
                m.forward = functools.partial(forward, m)
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

    @contextmanager
    def attached(self, model: torch.nn.Module) -> Iterator[None]:
        handles = []
        for n, m in model.named_modules():
            handles.append(m.register_forward_pre_hook(self.on_input(_label(n, m))))
            handles.append(m.register_forward_hook(self.on_output(_label(n, m))))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _first_in_eval(h: Harness) -> tuple[Stage, str, int, int, str | None] | None:
    """The first non-finite value on the eval path, as a user evaluates: eval mode under
    no_grad(), the model's own running statistics. PyTorch's transformer fast path runs only
    there, and gives NaN for a query whose every key is masked (an inverted key_padding_mask),
    which train mode hides. (stage, name, count, numel, last finite module) or None."""
    outputs = h.forward()
    count, numel = _bad(tensors_in(outputs))
    if not count and (not h.has_loss(outputs) or torch.isfinite(h.loss(outputs))):
        return None  # a detector's loss exists in train mode only: its detections are judged
    watch = _Watch()
    with watch.wrapped(h.model):
        h.forward()
    if watch.first_bad is not None:
        stage, name, count, numel = watch.first_bad
        where: Stage = "eval input" if stage == "input" else "eval output"
        return where, name, count, numel, watch.last_good
    if count:  # a functional op of the model's own forward made it
        return "eval output", _label("", h.model), count, numel, watch.last_good
    return "eval loss", "loss", 1, 1, None


def measure_finite(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    unpack: bool | None = None,
    seed: int = 0,
) -> FiniteResult:
    """One forward and backward in training mode, stopping at the first non-finite stage."""
    h = Harness(model, batch, loss_fn, seed=seed, unpack=unpack)

    def found(**fields: Any) -> FiniteResult:
        return diagnosed(FiniteResult(seed=h.seed, **fields), _diagnose)

    with h.isolated():
        for stage, named in (
            ("parameter", h.model.named_parameters()),
            ("buffer", h.model.named_buffers()),
        ):
            for name, t in named:
                count, numel = _bad([t])
                if count:
                    return found(
                        stage=stage, name=name, count=count, numel=numel, loss=float("nan")
                    )
        watch = _Watch()
        with autograd(), watch.attached(h.model):  # even inside no_grad() or inference_mode()
            for p in h.model.parameters():
                p.grad = None
            outputs = h.forward()
            if watch.first_bad is None:
                loss = h.graph_loss(outputs)
        if watch.first_bad is not None:
            stage, name, count, numel = watch.first_bad
            return found(
                stage=stage, name=name, count=count, numel=numel, loss=float("nan"),
                after=watch.last_good, overflow_dtype=watch.overflow_dtype, where=_localise(h),
            )  # fmt: skip
        with autograd():
            value = float(loss.detach())
            if not torch.isfinite(loss):
                return found(stage="loss", name="loss", count=1, numel=1, loss=value)
            loss.backward()
        params = dict(h.model.named_parameters())
        bad = tuple(n for n, p in params.items() if p.grad is not None and _bad([p.grad])[0])
        if watch.first_grad is not None:
            name, count, numel = watch.first_grad
            return found(
                stage="gradient", name=name, count=count, numel=numel, loss=value,
                nonfinite_grads=bad,
            )  # fmt: skip
        if bad:  # no module output saw it: the first parameter in reverse registration order
            grad = params[bad[-1]].grad
            assert grad is not None
            count, numel = _bad([grad])
            return found(
                stage="gradient", name=bad[-1], count=count, numel=numel, loss=value,
                nonfinite_grads=bad,
            )  # fmt: skip
    with h.isolated(train=False), torch.no_grad():
        first = _first_in_eval(h)
        where = _localise(h) if first is not None and first[0] != "eval loss" else None
    stage_, name_, count, numel, after = first or (None, None, 0, 0, None)
    return found(
        stage=stage_, name=name_, count=count, numel=numel, loss=value, after=after, where=where
    )


def _localise(h: Harness) -> Place | None:
    """The first module whose output is not finite while its inputs are, in a rerun of the
    forward pass (same seed, same mode), and the op inside it that made the NaN/Inf."""
    axis, region = whole()

    def run() -> Any:
        seed_torch(h.seed)
        return h.forward()

    return locate(h.model, run, run, Property(region, axis, 0.0, single=True))


def assert_finite(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> FiniteResult:
    """Check that parameters, buffers, every module output, the loss and all gradients are finite.

    Names the first offender in computation order: a parameter or buffer, then the first module
    (innermost first) whose output has a NaN/Inf, then the loss, then the first module output
    whose gradient does in backward order (the op just after that module has an infinite
    derivative), with the parameters that got NaN/Inf gradients.

    When the step is finite, one eval-mode forward under ``torch.no_grad()`` (how a model is
    evaluated) must be finite too, with the loss of its outputs; the first offender there is
    named the same way (stage ``"eval input"``, ``"eval output"`` or ``"eval loss"``). It is
    watched by wrapping each module's ``forward``, not by hooks, which would turn off PyTorch's
    transformer fast path: that path runs only in eval mode without grad, and gives NaN for a
    query whose every key is masked (pytorch/pytorch issue 24816), where train mode gives 0.

    Proves: one training-mode step on this batch stays finite, and so does the eval path.
    Does not prove: training stays finite (a high learning rate can diverge later), or that
    float16 would.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_finite(model, batch, loss_fn, unpack=unpack, seed=seed)
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


_MASKED_ROWS = Cause(
    id="fully_masked_rows",
    summary="a query whose every key is masked: PyTorch's fast path (nn.TransformerEncoderLayer, "
    "nn.MultiheadAttention in eval mode under no_grad) gives NaN for it where train mode gives "
    "0; an inverted key_padding_mask (it takes True at the padding to ignore), or a sequence "
    "that is all padding",
    remedy="pass key_padding_mask=(attention_mask == 0), and no all-padding sequence",
)
_EVAL_BRANCH = Cause(
    id="eval_only_branch",
    summary="a branch taken only in eval mode (if not self.training) with a log, sqrt or "
    "division by a value that can be zero",
    remedy="clamp it or add an epsilon",
)
_RUNNING_STATS = Cause(
    id="bad_running_stats",
    summary="BatchNorm running statistics that do not fit the data (a running_var near 0)",
    remedy="run nnsanity.assert_eval_mode",
)
_LOG = Cause(
    id="log_of_zero",
    summary="log, sqrt or pow of a value that can be zero or negative",
    remedy="clamp it (x.clamp_min(eps)) or use a stable op (log_softmax, logsumexp)",
)
_DIVISION = Cause(
    id="division_by_zero",
    summary="a division by a value that can be zero",
    remedy="add an epsilon to the denominator",
)
_OVERFLOW = Cause(
    id="activation_overflow",
    summary="activations overflow",
    remedy="check the init scale, use normalisation or float32",
)
_OPS = {
    "log": _LOG, "log2": _LOG, "log10": _LOG, "log1p": _LOG, "sqrt": _LOG, "rsqrt": _LOG,
    "pow": _LOG, "__pow__": _LOG, "div": _DIVISION, "__truediv__": _DIVISION,
    "true_divide": _DIVISION, "reciprocal": _DIVISION, "__rtruediv__": _DIVISION,
    "exp": _OVERFLOW, "__mul__": _OVERFLOW, "mul": _OVERFLOW, "matmul": _OVERFLOW,
}  # fmt: skip


def _at(r: FiniteResult) -> list[Cause]:
    """Causes read from where the first NaN/Inf was made: the op, or the module."""
    w = r.where
    if w is None:
        return []
    o = w.operation
    made = "made there from finite inputs"
    if o is not None and o.name in _OPS:
        c = _OPS[o.name]
        return [replace(c, evidence=(f"{o.text}: {made}",), where=w.short, support=MEASURED)]
    if o is not None:
        return [Cause(
            id="nonfinite_op", summary=f"{o.text} makes NaN/Inf from finite inputs",
            remedy="guard its input (clamp, epsilon)", evidence=(made,), where=w.short,
            support=MEASURED,
        )]  # fmt: skip
    if w.after or w.before:
        return [Cause(
            id="nonfinite_in_forward",
            summary=f"an op in {w.label}'s own forward makes NaN/Inf"
            + (f" between '{w.after}' and '{w.before}'" if w.after and w.before else ""),
            remedy="guard that op's input (clamp, epsilon)", evidence=(made,),
            where=w.label, support=CONSISTENT,
        )]  # fmt: skip
    return []


def _diagnose(r: FiniteResult) -> list[Cause]:
    if r.stage is not None and r.stage.startswith("eval"):
        attention = any(w in (r.name or "").lower() for w in ("attn", "attention", "transformer"))
        generic = (
            [_MASKED_ROWS, _EVAL_BRANCH, _RUNNING_STATS]
            if attention
            else [_EVAL_BRANCH, _RUNNING_STATS, _MASKED_ROWS]
        )
        if attention and r.where is not None:
            generic[0] = replace(_MASKED_ROWS, where=r.where.short, support=CONSISTENT)
        return (_at(r) if not attention else []) + generic
    if r.stage in ("parameter", "buffer"):
        return [
            Cause(
                id="diverged_before",
                summary="a previous training step diverged",
                remedy="lower the learning rate or clip gradients, and restart from a finite "
                "checkpoint",
                where=r.name,
            ),
            Cause(
                id="corrupt_weights",
                summary="loaded from a corrupt checkpoint or a bad custom init",
                remedy="check the checkpoint and the init",
                where=r.name,
            ),
        ]
    if r.stage in ("input", "output"):
        causes = [*_at(r), _LOG, _DIVISION, _OVERFLOW]
        if r.overflow_dtype is not None:
            causes.insert(0, Cause(
                id="float16_overflow",
                summary=f"activations overflow {r.overflow_dtype}'s range (float16 tops out at "
                "65504)",
                remedy="keep this layer in float32 (torch.autocast(..., enabled=False) around "
                "it), scale its input down (init scale, normalisation before it) or use bfloat16",
                evidence=(f"every non-finite value is +-inf in {r.overflow_dtype}",),
                where=r.where.short if r.where else r.name,
                support=MEASURED,
            ))  # fmt: skip
        return causes
    if r.stage == "loss":
        return [
            Cause(
                id="log_of_probability",
                summary="log of a probability that underflows to zero",
                remedy="pass logits to F.cross_entropy or use log_softmax instead of log(softmax)",
            ),
            Cause(
                id="empty_mean_in_loss",
                summary="a division by zero in the loss (a mean over an empty mask)",
                remedy="guard the count of the mask",
            ),
        ]
    return [
        Cause(
            id="infinite_derivative",
            summary="the op right after it has an infinite derivative where it is evaluated: "
            "sqrt or norm of zero, pow(x, p<1) at zero, log near zero, acos/asin at ±1",
            remedy="add an epsilon",
            where=r.name,
        ),
        Cause(
            id="where_after_nan",
            summary="torch.where/masking after a NaN-producing op",
            remedy="mask the input, not the output",
        ),
    ]


def _explain_eval(r: FiniteResult) -> Explanation:
    if r.stage == "eval loss":
        return Explanation(
            header="The loss is not finite in eval mode, though it is in train mode!",
            lines=["Loss of an eval-mode forward under no_grad(): not finite"],
        )
    where = "input" if r.stage == "eval input" else "output"
    lines = [
        f"First non-finite value in an eval-mode forward under no_grad(): the {where} of "
        f"{r.name} (the training step is finite)",
        f"Non-finite values: {r.count} of {r.numel} are NaN/Inf",
    ]
    if r.after:
        lines.append(f"Last finite module output: {r.after}")
    return Explanation(
        header=f"The {where} of {r.name} is the first non-finite value in eval mode!",
        lines=lines,
        where=r.where,
    )


def _explain(r: FiniteResult) -> Explanation:
    if r.stage is not None and r.stage.startswith("eval"):
        return _explain_eval(r)
    share = f"Non-finite values: {r.count} of {r.numel} are NaN/Inf"
    if r.stage in ("parameter", "buffer"):
        return Explanation(
            header=f"{r.stage.capitalize()} '{r.name}' is not finite!", lines=[share]
        )
    if r.stage in ("input", "output"):
        lines = [f"First non-finite value in forward: the {r.stage} of {r.name}", share]
        if r.after:
            lines.append(f"Last finite module output: {r.after}")
        if r.overflow_dtype is not None:
            lines.append(f"Every non-finite value is +-inf in {r.overflow_dtype}: an overflow")
        return Explanation(
            header=f"The {r.stage} of {r.name} is the first non-finite value in forward!",
            lines=lines,
            where=r.where,
        )
    if r.stage == "loss":
        return Explanation(
            header="The loss is not finite though every output is!", lines=[f"Loss: {r.loss}"]
        )
    where = (
        f"Parameter '{r.name}' has"
        if r.name in r.nonfinite_grads
        else f"The gradient at the output of {r.name} is"
    )
    return Explanation(
        header=f"{where} the first non-finite gradient in backward!",
        lines=[share, f"Parameters with NaN/Inf gradients: {names(r.nonfinite_grads) or 'none'}"],
    )
