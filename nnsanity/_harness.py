"""One check call's hold on the user's model, batch and loss: validated once, isolated once.

A :class:`Harness` reads the batch (an ``(inputs, targets)`` pair, or a mapping such as a
tokenizer's ``BatchEncoding`` with its labels inside), moves it to the model's device, decides
once how to call the model (``model(x)``, ``model(**inputs)`` or ``model(*inputs)``) and how to
get the loss (``loss_fn(outputs, targets)``, or ``outputs.loss`` for a model that computes its
own), and owns forward, loss, backward and the optimisation step. A check module then reads as
the measurement alone: ``with harness.isolated(): ...``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import statistics
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import torch
from torch.overrides import TorchFunctionMode

from nnsanity._arguments import (
    SAFE_LR,
    LossFn,
    OptimizerFactory,
    Step,
    check_int,
    check_model,
    check_seed,
    check_training,
    default_optimizer,
    first_line,
)
from nnsanity._forensics import Recorder, StepForensics, loss_gradient
from nnsanity._state import autograd, isolated, preserved_module, state_attributes
from nnsanity._structures import (
    LABEL_KEYS,
    Path,
    Role,
    check_perturb,
    describe,
    leaves,
    map_leaves,
    map_tensors,
    replace_at,
    roles,
    select_output,
    summarize,
    tensors_in,
)
from nnsanity.seeding import seed_torch

N_EVALS = 8  # repeated train-mode evaluations measure dropout/BatchNorm noise in the loss

CallStyle = Literal["single", "kwargs", "args"]

# Names of a forward parameter that takes the targets (nanoGPT's and minGPT's
# ``forward(idx, targets=None) -> (logits, loss)``, Hugging Face's ``labels``).
TARGET_PARAMETERS = ("targets", "target", "labels", "label", "y")


def _binds(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): assume it takes what it is given
        return True
    return True


def _call_style(model: torch.nn.Module, inputs: Any, unpack: bool | None) -> CallStyle:
    """How the model takes its inputs: keywords for a mapping whose keys its forward accepts,
    positional arguments for a tuple its forward needs spread out, else one argument."""
    if unpack is False or isinstance(inputs, torch.Tensor):
        return "single"
    if isinstance(inputs, Mapping):
        keys = {str(k): None for k in inputs}
        if unpack or _binds(model.forward, **keys):
            return "kwargs"
        return "single"
    spread = unpack or (not _binds(model.forward, inputs) and _binds(model.forward, *inputs))
    if isinstance(inputs, (tuple, list)) and not hasattr(inputs, "_fields") and spread:
        return "args"
    return "single"


def target_parameter(model: torch.nn.Module, inputs: Any, style: CallStyle) -> str | None:
    """The name of the forward parameter that takes the targets of an ``(inputs, targets)``
    batch, if it has one: a parameter named in ``TARGET_PARAMETERS`` that the inputs do not
    already fill, by which the call ``model(inputs, targets=y)`` binds."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # no signature (a builtin)
        return None
    for name in TARGET_PARAMETERS:
        p = params.get(name)
        if p is None or p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if style == "kwargs":
            if name not in inputs and _binds(model.forward, **inputs, **{name: None}):
                return name
        elif style == "args":
            if _binds(model.forward, *inputs, **{name: None}):
                return name
        elif _binds(model.forward, inputs, **{name: None}):
            return name
    return None


def is_loss_dict(outputs: Any) -> bool:
    """Whether ``outputs`` is a dict of losses and nothing else: every entry a floating-point
    scalar (a torchvision detector in train mode: ``loss_classifier``, ``loss_box_reg``,
    ``loss_objectness``, ``loss_rpn_box_reg``; RetinaNet's ``classification`` and
    ``bbox_regression``)."""
    return (
        isinstance(outputs, Mapping)
        and "loss" not in outputs
        and bool(outputs)
        and all(
            isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point()
            for v in outputs.values()
        )
    )


def own_loss(outputs: Any) -> Any:
    """The loss a model returned with its outputs: ``outputs.loss`` (or ``["loss"]``), the sum
    of a dict of losses (torchvision's detectors, summed unweighted as its reference training
    script does; pass ``loss_fn`` to weight them), or the scalar at either end of a tuple,
    ``(loss, logits)`` (Hugging Face's ``return_dict=False``) or ``(logits, loss)`` (nanoGPT,
    minGPT); None if there is none."""
    if is_loss_dict(outputs):
        return sum(v.reshape(()) for v in outputs.values())
    if isinstance(outputs, Mapping):
        return outputs.get("loss")
    if isinstance(outputs, (tuple, list)) and outputs:
        for end in (outputs[0], outputs[-1]):
            if isinstance(end, torch.Tensor) and end.numel() == 1 and end.is_floating_point():
                return end
        return None
    return getattr(outputs, "loss", None)


def _shape(x: Any) -> str:
    return f"of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"({summarize(x)})"


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if not t.is_inference():
        return t.to(device)
    # A tensor made under torch.inference_mode() cannot enter autograd; a copy made outside it can.
    with torch.inference_mode(False):
        return t.to(device, copy=True)


def _check_finite(x: Any, root: str, role: dict[Path, Role] | None = None) -> None:
    for path, t in leaves(x):
        if not (t.is_floating_point() or t.is_complex()):
            continue
        structure = role is not None and role.get(path) == "structure"
        bad = t.isnan() if structure else ~torch.isfinite(t)  # -inf is a valid additive mask
        if bad.any():
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{describe(path, root)} holds {int(bad.sum())} NaN/Inf value(s) (first at index "
                f"{where}); the check would measure garbage. Clean or impute the data first."
            )


class _GraphBreaks(TorchFunctionMode):
    """Records the operations that take a tensor with a graph and give back one without (an
    ``argmax``, a comparison, ``.detach()``, a cast to an integer type) or a plain number
    (``.item()``, ``.tolist()``), and those run under ``torch.no_grad()``."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if any(t.requires_grad for t in tensors_in((args, kwargs))):
            if not torch.is_grad_enabled():
                step = "an operation under torch.no_grad()"
            else:
                produced = tensors_in(out)
                if produced and any(t.requires_grad for t in produced):
                    return out
                name = getattr(func, "__name__", repr(func))
                if name == "__get__":  # a property: .data
                    name = "." + str(getattr(getattr(func, "__self__", None), "__name__", "?"))
                else:  # Tensor.__gt__ reads as gt()
                    name = name.strip("_") + "()"
                step = name if name in ("item()", "tolist()", "numpy()") or produced else ""
            if step and step not in self.found:
                self.found.append(step)
        return out


def _breaks(fn: Callable[[], Any]) -> list[str]:
    """The graph-breaking steps that running ``fn`` takes (see ``_GraphBreaks``)."""
    mode = _GraphBreaks()
    with contextlib.suppress(Exception), mode, torch.enable_grad():
        fn()
    return mode.found


class Harness:
    """The model, batch and loss of one check call, validated and on the model's device.

    ``batch`` is ``(inputs, targets)`` (targets may be None for checks without a loss), or a
    mapping whose ``LABEL_KEYS`` entries are the targets and the rest the inputs; with
    ``loss_fn=None`` the model computes its own loss from the whole mapping
    (``model(**batch).loss``, the Hugging Face convention). ``inputs_only``: ``batch`` is the
    inputs alone (for checks of the model's outputs, such as causality).

    A model whose forward takes the targets (a parameter named ``targets``, ``target``,
    ``labels``, ``label`` or ``y`` that the inputs leave free; nanoGPT's
    ``model(idx, targets) -> (logits, loss)``) is called as ``model(inputs, targets=targets)``
    on an ``(inputs, targets)`` batch, by every check: such a model may return its full logits
    only when given the targets. With ``loss_fn=None`` its own loss is used (``outputs.loss``,
    or the scalar at either end of a returned tuple), else ``loss_fn(outputs, targets)``. The
    targets are never perturbed: checks change the inputs alone. This holds for
    ``inputs_only`` checks too: such a model's ``(inputs, targets)`` is read as that pair.
    """

    def __init__(
        self,
        model: Any,
        batch: Any,
        loss_fn: LossFn | None = None,
        *,
        seed: Any,
        optimizer: OptimizerFactory | None = None,
        step: Step | None = None,
        output: Any = None,
        unpack: bool | None = None,
        perturb: Any = None,
        needs_loss: bool = True,
        inputs_only: bool = False,
        default_lr: float = SAFE_LR,
    ) -> None:
        self.model = check_model(model)
        self.default_lr = default_lr
        self.seed = check_seed(seed)
        check_training(optimizer, step)
        self.optimizer, self.step = optimizer, step
        self.recorder: Recorder | None = None
        self.last_optimizer: torch.optim.Optimizer | None = None  # the default step's
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be callable as loss_fn(outputs, targets), got "
                f"{type(loss_fn).__name__}."
            )
        if unpack is not None and not isinstance(unpack, bool):
            raise TypeError(f"unpack must be None (decide), True or False, got {unpack!r}.")
        if output is not None and not (callable(output) or isinstance(output, (str, int))):
            raise TypeError(
                f"output must be a key, an index or a callable outputs -> tensor, got {output!r}."
            )
        self.output = output
        self.loss_fn = loss_fn
        takes_targets = (
            isinstance(batch, (tuple, list))
            and len(batch) == 2
            and target_parameter(model, batch[0], _call_style(model, batch[0], unpack)) is not None
        )
        # For the checks of the outputs alone (causality), an (inputs, targets) pair is still
        # read as one when the model takes the targets: its full outputs may need them.
        inputs, targets, self._form = self._split(
            batch, loss_fn, needs_loss and not takes_targets, inputs_only and not takes_targets
        )
        self._batch_type = type(batch)
        self.self_loss = needs_loss and loss_fn is None
        device = next(iter(model.parameters())).device
        self.inputs = map_tensors(lambda t: _to(t, device), inputs)
        self.targets = map_tensors(lambda t: _to(t, device), targets)
        self.roles = roles(self.inputs, check_perturb(self.inputs, perturb))
        _check_finite(self.inputs, "inputs", self.roles)
        _check_finite(self.targets, "targets")
        if not any(t.dim() for t in tensors_in(self.inputs)):
            raise TypeError(
                f"the inputs hold no tensor with a batch dimension ({summarize(inputs)}); pass "
                "the inputs as a tensor or a container (dict, tuple, dataclass) of tensors."
            )
        if self.batch_size == 0:
            raise ValueError(
                f"the batch is empty (inputs: {summarize(self.inputs)}); pass at least one sample."
            )
        self._style = _call_style(model, self.inputs, unpack)
        # Labels travel in the call when the model computes its loss from them, and for the
        # checks without a loss when it takes them (an encoder-decoder builds its decoder inputs
        # from them); they are structure then, never changed.
        labels = (
            self.targets if self._form == "mapping" and isinstance(self.targets, Mapping) else {}
        )
        takes = self._style == "kwargs" and _binds(model.forward, **self.inputs, **labels)
        self._call_labels = labels if self.self_loss or (not needs_loss and takes) else {}
        name = target_parameter(model, self.inputs, self._style) if takes_targets else None
        if name is not None:  # the nanoGPT convention: every call carries the targets
            self._call_labels = {name: self.targets}

    # -- reading the batch --------------------------------------------------------------------

    @staticmethod
    def _split(
        batch: Any, loss_fn: Any, needs_loss: bool, inputs_only: bool
    ) -> tuple[Any, Any, str]:
        if inputs_only:
            return batch, None, "inputs"
        if isinstance(batch, Mapping):
            labels = {k: v for k, v in batch.items() if k in LABEL_KEYS}
            inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
            # A model computing its own loss may need no labels (CLIP's return_loss=True).
            if needs_loss and not labels and loss_fn is not None:
                raise ValueError(
                    f"the batch is a mapping with no labels (keys: {list(batch)}); put the "
                    f"targets under one of {list(LABEL_KEYS[:3])}, or pass (inputs, targets)."
                )
            if needs_loss and loss_fn is not None:
                targets = next(iter(labels.values())) if len(labels) == 1 else labels
                return inputs, targets, "mapping"
            return inputs, labels, "mapping"
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            if needs_loss and loss_fn is None:
                raise TypeError(
                    "loss_fn is None, which needs a mapping batch with its labels inside for a "
                    "model that computes its own loss (model(**batch).loss), or a model whose "
                    "forward takes the targets (forward(x, targets=None) -> (logits, loss)); "
                    "pass loss_fn= for an (inputs, targets) batch."
                )
            return batch[0], batch[1], "pair"
        got = (
            f"a {type(batch).__name__} of length {len(batch)}"
            if isinstance(batch, (tuple, list))
            else f"a {type(batch).__name__}"
        )
        raise TypeError(
            f"batch must be an (inputs, targets) pair or a mapping with its labels inside, got "
            f"{got}. Pass e.g. batch=(x, y), next(iter(loader)), or a tokenizer's output with "
            "'labels'."
        )

    @property
    def per_sample(self) -> bool:
        """Whether the inputs are a list of per-sample tensors, with a list of as many
        per-sample targets (torchvision's detectors: images of shape (3, H, W) each, a dict of
        ``boxes`` and ``labels`` each): then sample i is ``inputs[i]``, not a row of a tensor."""
        return (
            isinstance(self.inputs, list)
            and bool(self.inputs)
            and all(isinstance(t, torch.Tensor) and t.dim() for t in self.inputs)
            and isinstance(self.targets, (list, tuple))
            and len(self.targets) == len(self.inputs)
        )

    @property
    def batch_size(self) -> int:
        """The length of a per-sample list (see ``per_sample``), else the first dimension of the
        first data tensor (of any tensor if none is data)."""
        if self.per_sample:
            return len(self.inputs)
        found = [(p, t) for p, t in leaves(self.inputs) if t.dim()]
        data = [t for p, t in found if self.roles.get(p) == "data"] or [t for _, t in found]
        return int(data[0].shape[0])

    def batch_dim(self, given: int | None = None) -> int:
        """The inputs' dimension that indexes the samples: ``given`` (a check's ``batch_dim=``),
        checked against the inputs; by default 1 where that is unambiguous (the input tensors,
        all of >= 2 dims, disagree on their first dim and agree on their second: time-first
        tokens (T, B) beside an LSTM state (layers, B, H), a seq2seq's (S, B) and (T, B)),
        else 0. A lone time-first (T, B) tensor cannot say it: it needs ``batch_dim=1``."""
        shapes = [tuple(t.shape) for _, t in self.data_leaves() if t.dim()]
        if given is None:
            every = [tuple(t.shape) for t in tensors_in(self.inputs) if t.dim()]
            wide = [s for s in every if len(s) >= 2]
            unequal = len({s[0] for s in every}) > 1
            agree = len({s[1] for s in wide}) == 1
            return 1 if len(wide) == len(every) >= 2 and unequal and agree else 0
        d = check_int(given, "batch_dim")
        if not shapes or not -len(shapes[0]) <= d < len(shapes[0]):
            raise ValueError(
                f"batch_dim={d} is not a dimension of the inputs (data shapes {shapes}); pass "
                "the dimension that indexes the samples: 0 for (B, ...) inputs, 1 for "
                "time-first (T, B)."
            )
        return d % len(shapes[0])

    def user_batch(self, inputs: Any = None) -> Any:
        """The batch in the user's own form (for their ``step``), with ``inputs`` swapped in."""
        inputs = self.inputs if inputs is None else inputs
        if self._form == "mapping":
            labels = self.targets if isinstance(self.targets, Mapping) else {}
            if not labels:  # loss_fn with one label key: rebuild it under its key
                labels = {k: self.targets for k in LABEL_KEYS[:1]}
            items = {**inputs, **labels}
            try:  # the user's own mapping type (a tokenizer's BatchEncoding has attributes)
                return items if self._batch_type is dict else self._batch_type(items)
            except Exception:  # a mapping type that cannot be built from a dict
                return items
        return (inputs, self.targets)

    # -- calling the model --------------------------------------------------------------------

    @contextlib.contextmanager
    def isolated(self, *, train: bool = True) -> Iterator[None]:
        """The model in train (or eval) mode and the RNGs seeded; all restored on exit (a
        state the model keeps between calls too). A backward pass through the graph of an
        earlier call becomes a ValueError naming the state that carried it."""
        with isolated(self.model):
            seed_torch(self.seed)
            self.model.train(train)
            try:
                yield
            except RuntimeError as e:
                if "backward through the graph a second time" not in str(e):
                    raise
                self._explain_second_backward(e)

    def _explain_second_backward(self, e: RuntimeError) -> None:
        model = type(self.model).__name__
        graphs = [
            name
            for name, ts in state_attributes(self.model).items()
            if any(t.grad_fn is not None for t in ts)
        ]
        held = (
            f"{model}.{' and '.join(graphs)} holds a tensor with the autograd graph of an "
            "earlier call (a hidden state carried between calls and never detached)"
            if graphs
            else f"a tensor kept from an earlier call of {model} (or of the step) still holds "
            "that call's autograd graph"
        )
        raise ValueError(
            f"{held}, so backward() runs through a graph already freed ({first_line(e)}). "
            "Detach the state before the next call (self.hidden = tuple(h.detach() for h in "
            "hidden)), or reset it for every batch, or pass it explicitly "
            "(out, hidden = model(x, hidden)) and detach it between batches."
        ) from e

    def carried_state(self) -> tuple[str, ...]:
        """The attributes (and buffers, BatchNorm's statistics aside) of the model that hold a
        tensor whose value one more call on the same batch changes: a state carried from call
        to call, such as an LSTM's hidden state kept on the module, which makes an output
        depend on the calls before it. Two seeded forward passes in the current mode; the state
        is put back."""

        norms = {
            name
            for name, m in self.model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._NormBase)
        }  # running statistics are BatchNorm's to update (assert_eval_mode judges them)

        def snapshot() -> dict[str, list[torch.Tensor]]:
            found = {
                name: [t.detach().clone() for t in ts]
                for name, ts in state_attributes(self.model).items()
            }
            for name, t in self.model.named_buffers():
                if name.rpartition(".")[0] not in norms:
                    found[name] = [t.detach().clone()]
            return found

        with preserved_module(self.model), torch.no_grad():
            seed_torch(self.seed)
            self.forward()
            first = snapshot()
            seed_torch(self.seed)
            self.forward()
            second = snapshot()
        return tuple(
            name
            for name, ts in second.items()
            if name in first
            and (
                len(ts) != len(first[name])
                or any(
                    a.shape != b.shape or not torch.equal(a, b)
                    for a, b in zip(ts, first[name], strict=True)
                )
            )
        )

    def forward(self, inputs: Any = None, *, labels: Any = None) -> Any:
        """Call the model on ``inputs`` (default: the batch's), turning a shape, index or type
        error inside it into a ValueError that names the inputs. ``labels`` replaces the labels
        that travel in the call (``call_labels``), when the model takes them."""
        inputs = self.inputs if inputs is None else inputs
        extra = self._call_labels if labels is None else labels
        try:
            if self._style == "kwargs":
                out = self.model(**inputs, **extra)
            elif self._style == "args":
                out = self.model(*inputs, **extra)
            elif extra:
                out = self.model(inputs, **extra)
            else:
                out = self.model(inputs)
        except (RuntimeError, IndexError, KeyError, AttributeError, TypeError, ValueError) as e:
            hint = (
                "index out of range — token ids >= the embedding size? "
                if isinstance(e, IndexError)
                else ""
            )
            call = {"kwargs": "model(**inputs)", "args": "model(*inputs)"}.get(
                self._style, "model(inputs)"
            )
            if extra and self._form == "pair":
                call = call[:-1] + f", {next(iter(extra))}=targets)"
            raise ValueError(
                f"{type(self.model).__name__} failed when called as {call} on "
                f"{summarize(inputs)}: {hint}{first_line(e)}. Check that the batch matches what "
                "the model expects (unpack= chooses how a dict or tuple is passed)."
            ) from e
        if out is None:
            raise TypeError(
                f"{type(self.model).__name__}.forward returned None; it must return its outputs "
                "(a tensor, a tuple or a dict of them)."
            )
        return out

    def has_loss(self, outputs: Any) -> bool:
        """Whether ``outputs`` carry a loss to read: always with ``loss_fn``; for a model that
        computes its own, False where it returns none in this mode (a torchvision detector's
        detections in eval mode)."""
        return not self.self_loss or own_loss(outputs) is not None

    def loss_forward(self, inputs: Any = None) -> Any:
        """``forward(inputs)`` in the current mode, for its loss. A model that computes its
        loss only in train mode (a torchvision detector returns its detections in eval mode) is
        run again with every module in train mode, and its modes put back: its dropout, if it
        has any, is then on."""
        out = self.forward(inputs)
        if self.has_loss(out) or all(m.training for m in self.model.modules()):
            return out
        modes = {m: m.training for m in self.model.modules()}
        self.model.train()
        try:
            return self.forward(inputs)
        finally:
            for m, mode in modes.items():
                m.training = mode

    @property
    def call_labels(self) -> dict[str, Any]:
        """The labels passed to the model with the inputs (a model computing its own loss, or
        an encoder-decoder building its decoder inputs from them); empty when none are."""
        return dict(self._call_labels)

    def logits(self, outputs: Any) -> torch.Tensor:
        """The output tensor the checks judge; see ``_structures.select_output``. A ValueError
        for outputs that are a dict of losses alone (see ``is_loss_dict``): nothing to judge."""
        if self.output is None and is_loss_dict(outputs):
            raise ValueError(self.losses_only(outputs))
        return select_output(outputs, self.output)[0]

    def losses_only(self, outputs: Any) -> str:
        """Why a check that judges the model's outputs does not apply to a model whose outputs
        (in this mode) are its losses alone."""
        mode = "train" if self.model.training else "eval"
        return (
            f"{type(self.model).__name__} returns only its losses in {mode} mode "
            f"({', '.join(map(str, outputs))}; a torchvision-style detector), so there are no "
            "per-sample outputs (logits) to judge: this check does not apply to it. The checks "
            "of the loss (params_update, loss_decreases, can_overfit, ...) judge the sum of "
            "the losses; pass output= (a callable outputs -> tensor) only if the model can "
            "return its logits in this mode."
        )

    def loss(self, outputs: Any, targets: Any = None) -> torch.Tensor:
        """The scalar loss of ``outputs``: ``loss_fn(outputs, targets)``, or the model's own."""
        if self.self_loss:
            loss = own_loss(outputs)
            if not isinstance(loss, torch.Tensor):
                labels = "" if self.targets else f" (the batch holds none of {LABEL_KEYS[:3]})"
                raise ValueError(
                    f"loss_fn is None but the model returned no loss ({summarize(outputs)}); "
                    "a model that computes its own loss returns it as outputs.loss, or as the "
                    "first or last entry of a tuple ((logits, loss)), when given its "
                    f"labels{labels}. Pass loss_fn, or the labels in the batch."
                )
            return self._scalar(loss, "the model's loss")
        assert self.loss_fn is not None
        targets = self.targets if targets is None else targets
        try:
            loss = self.loss_fn(outputs, targets)
        except TypeError as e:  # most often the wrong arity: loss_fn(outputs) or 3 arguments
            raise TypeError(
                f"loss_fn failed on outputs {_shape(outputs)} and targets {_shape(targets)}: "
                f"{first_line(e)}. It must be callable as loss_fn(outputs, targets) -> scalar "
                "tensor."
            ) from e
        except (RuntimeError, IndexError, ValueError) as e:
            raise ValueError(
                f"loss_fn failed on outputs {_shape(outputs)} and targets {_shape(targets)}: "
                f"{first_line(e)}. Check the target shape and dtype the loss expects."
            ) from e
        return self._scalar(loss, "loss_fn")

    def graph_loss(self, outputs: Any) -> torch.Tensor:
        """``loss(outputs)`` for a backward pass: a ValueError that names the step that broke
        the graph (loss_fn's or the model's forward) when the loss has none, instead of
        torch's "element 0 of tensors does not require grad" at ``backward()``."""
        loss = self.loss(outputs)
        if loss.requires_grad or not torch.is_grad_enabled():
            return loss
        model = type(self.model).__name__
        with_graph = any(t.requires_grad for t in tensors_in(outputs))
        if with_graph and not self.self_loss:
            culprit, steps = "loss_fn", _breaks(lambda: self.loss_fn(outputs, self.targets))  # type: ignore[misc]
            told = "although the model's outputs have one"
        else:
            culprit, steps = f"{model}.forward", _breaks(self.forward)
            told = "although its logits have one" if with_graph else "and neither do its outputs"
        where = f" (at {', '.join(steps[:3])})" if steps else ""
        raise ValueError(
            f"{culprit} breaks the autograd graph{where}: the loss has no graph "
            f"(requires_grad=False) {told}, so no gradient can reach {model}'s parameters. "
            "Compute the loss from the outputs with differentiable operations: the logits, not "
            "their argmax or a comparison; no .detach(), .item(), torch.tensor(...) or "
            "torch.no_grad() on the way."
        )

    def _explain_no_graph(self, e: RuntimeError) -> None:
        """The user's step backpropagated a loss without a graph: name the step that broke it
        where the harness's own loss finds it, else the step itself."""
        if self.loss_fn is not None or self.self_loss:
            self.graph_loss(self.forward())  # raises naming loss_fn or the forward, if either
        raise ValueError(
            f"step= called backward() on a loss with no autograd graph ({first_line(e)}): "
            "something in the step breaks the graph between the model's outputs and the loss "
            "(an argmax, .detach(), .item(), torch.tensor(...) or torch.no_grad()). Compute the "
            "loss from the outputs with differentiable operations."
        ) from e

    @staticmethod
    def _scalar(loss: Any, what: str) -> torch.Tensor:
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"{what} must return a tensor, got {type(loss).__name__}.")
        if loss.numel() != 1:
            raise ValueError(
                f"{what} returned a tensor of shape {tuple(loss.shape)}, not a scalar. "
                "Reduce it (reduction='mean' or .mean()) so it can be minimised."
            )
        if not loss.is_floating_point():
            raise TypeError(f"{what} returned a {loss.dtype} tensor; it must be floating point.")
        return loss.reshape(())

    def loss_of_logits(self, outputs: Any, replacement: torch.Tensor) -> torch.Tensor | None:
        """The loss had the model output ``replacement`` in place of its logits; None when that
        cannot be arranged (an ``output=`` callable, or a self-computed loss whose logits no
        module returns)."""
        path = select_output(outputs, self.output)[1]
        if not self.self_loss:
            return None if path is None else self.loss(replace_at(outputs, path, replacement))
        return self._self_loss_with(replacement)

    def _self_loss_with(self, replacement: torch.Tensor) -> torch.Tensor | None:
        """Rerun a model that computes its own loss with the module that produces its logits
        returning ``replacement`` instead, and read the loss it computes."""
        seen: list[tuple[torch.nn.Module, torch.Tensor]] = []

        def spot(module: torch.nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                seen.append((module, out))  # hooks fire innermost first

        with _hooks(self.model, spot):
            logits = self.logits(self.forward())
        producer = next((m for m, o in seen if o is logits and m is not self.model), None)
        seen.clear()
        if logits.shape != replacement.shape:
            return None
        if producer is None:  # made after the last module (a soft-cap, a bias): find the op
            return self._self_loss_with_op(logits, replacement)

        def swap(module: torch.nn.Module, args: Any, out: Any) -> torch.Tensor:
            return replacement

        handle = producer.register_forward_hook(swap)
        try:
            return self.loss(self.forward())
        finally:
            handle.remove()

    def _self_loss_with_op(
        self, logits: torch.Tensor, replacement: torch.Tensor
    ) -> torch.Tensor | None:
        """As ``_self_loss_with``, where the logits come from an operation after the last
        module (Gemma2's tanh soft-cap after ``lm_head``, BART's ``+ final_logits_bias``): the
        torch call whose result is the output's logits is found by its place in the forward's
        sequence of calls, which a rerun on the same inputs repeats, and returns
        ``replacement`` instead."""
        mode = _CallSwap()
        with mode:
            found = self.logits(self.forward())
        mode.target = next((i for i, ref in mode.results if ref() is found), None)
        mode.results.clear()
        if mode.target is None or found.shape != logits.shape:
            return None
        mode.replacement, mode.calls = replacement, 0
        with mode:
            return self.loss(self.forward())

    # -- training -----------------------------------------------------------------------------

    def backward(self) -> float:
        """One forward/backward in train mode on fresh gradients; returns the loss."""
        self.model.train()
        for p in self.model.parameters():
            p.grad = None
        with autograd():
            loss = self.graph_loss(self.forward())
            loss.backward()
        return float(loss.detach())

    def stepper(self, inputs: Any = None) -> Callable[[], float]:
        """``run() -> loss``: one optimisation step on the batch (with ``inputs`` swapped in).

        With the user's ``step``, it is called on the batch in the user's form and must return
        the loss *before* its update (a tensor or a float), so that bugs in the user's loop are
        what gets tested; on the batch itself (``inputs`` None) what it does to the optimizer is
        recorded (``forensics()``). Either step runs with autograd on, even inside
        ``torch.no_grad()``. The user's step gets a fresh copy of the batch at every call, as a
        loader would give it: an in-place augmentation (timm's ``Mixup`` mixes ``x`` in place)
        then neither compounds from step to step nor changes the caller's batch.
        """
        if self.step is not None:
            step, batch = self.step, self.user_batch(inputs)

            def call() -> Any:
                with autograd():
                    try:
                        return step(map_tensors(torch.clone, batch))
                    except RuntimeError as e:
                        if "does not require grad" not in str(e):
                            raise
                        self._explain_no_graph(e)
                        raise

            runner: Callable[[], Any] = call
            if inputs is None:
                runner = self.recorder = Recorder(
                    self.model, call, step,
                    lambda: loss_gradient(self.model, lambda: self.graph_loss(self.forward())),
                )  # fmt: skip

            def run_user() -> float:
                loss = runner()
                if isinstance(loss, torch.Tensor):
                    if loss.numel() != 1:
                        raise ValueError(
                            f"step returned a tensor of shape {tuple(loss.shape)}; it must return "
                            "the scalar loss of the batch (a 0-d tensor or a float)."
                        )
                    return float(loss.detach())
                if isinstance(loss, (int, float)):
                    return float(loss)
                raise TypeError(
                    f"step must return the loss as a tensor or float, got {type(loss).__name__}."
                )

            return run_user

        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = (self.optimizer or default_optimizer(self.default_lr))(params)
        self.last_optimizer = opt
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                "optimizer must be a factory params -> torch.optim.Optimizer, e.g. "
                "lambda p: torch.optim.SGD(p, lr=0.1); got one returning "
                f"{type(opt).__name__}."
            )

        def run_default() -> float:
            with autograd():
                opt.zero_grad(set_to_none=True)
                loss = self.graph_loss(self.forward(inputs))
                loss.backward()
                opt.step()
            return float(loss.detach())

        return run_default

    def forensics(self) -> StepForensics | None:
        """What the user's step did to the optimizer while the check ran (None without one)."""
        return self.recorder.result() if self.recorder is not None else None

    def evaluate(self, inputs: Any = None) -> tuple[float, float]:
        """Mean and sd of ``N_EVALS`` train-mode losses: dropout masks make them differ, and that
        spread is the noise floor of any comparison. Two bit-identical first evaluations mean
        a model without randomness (BatchNorm's batch statistics are the same every time): the
        loss is exact and the other evaluations are skipped."""
        with preserved_module(self.model), torch.no_grad():  # BatchNorm running stats untouched
            losses = [float(self.loss(self.forward(inputs))) for _ in range(2)]
            if losses[0] == losses[1]:
                return losses[0], 0.0
            losses += [float(self.loss(self.forward(inputs))) for _ in range(N_EVALS - 2)]
        if not all(map(math.isfinite, losses)):
            return math.nan, math.nan
        return statistics.fmean(losses), statistics.stdev(losses)

    def data_leaves(self, inputs: Any = None) -> list[tuple[Path, torch.Tensor]]:
        """The data tensors (those a check may change) of the inputs, with their paths."""
        return [
            (p, t)
            for p, t in leaves(self.inputs if inputs is None else inputs)
            if self.roles.get(p) == "data"
        ]

    def map_data(self, fn: Callable[[Path, torch.Tensor], torch.Tensor], inputs: Any = None) -> Any:
        """The inputs with each data tensor replaced by ``fn(path, t)``; structure kept."""
        return map_leaves(
            lambda p, t: fn(p, t) if self.roles.get(p) == "data" else t,
            self.inputs if inputs is None else inputs,
        )


class _CallSwap(torch.overrides.TorchFunctionMode):
    """Numbers the torch calls of a forward; records their tensor results (weakly: only the
    output's own survive), or makes call ``target`` return ``replacement``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.results: list[tuple[int, weakref.ref[torch.Tensor]]] = []
        self.target: int | None = None
        self.replacement: torch.Tensor | None = None

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        k, self.calls = self.calls, self.calls + 1
        if self.target is None:
            if isinstance(out, torch.Tensor):
                self.results.append((k, weakref.ref(out)))
        elif k == self.target:
            return self.replacement
        return out


@contextlib.contextmanager
def _hooks(model: torch.nn.Module, hook: Callable[..., Any]) -> Iterator[None]:
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
