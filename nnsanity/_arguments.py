"""Validate the arguments every check shares, with errors that name the problem and the fix.

Checks call these before doing any work, so misuse raises ``TypeError``/``ValueError`` at the
user's call instead of a traceback from deep inside torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

LossFn = Callable[[Any, Any], torch.Tensor]
OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
Step = Callable[[Any], Any]


def default_optimizer(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam at 3e-4, Karpathy's "safe and forgiving" default."""
    return torch.optim.Adam(params, lr=3e-4)


def check_model(model: Any) -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters (none with requires_grad=True); "
            "a sanity check needs something to train. Did you freeze the whole model?"
        )
    if any(p.is_inference() for p in model.parameters()):
        raise ValueError(
            f"{type(model).__name__}'s parameters were created under torch.inference_mode(), so "
            "autograd cannot train them. Build the model outside inference_mode (or under "
            "torch.no_grad())."
        )
    return model


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def tensors_in(x: Any) -> list[torch.Tensor]:
    """The tensors in ``x`` (a tensor, or lists, tuples and dicts of them), in order."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in tensors_in(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in tensors_in(v)]
    return []


def map_tensors(fn: Callable[[torch.Tensor], Any], x: Any) -> Any:
    """``x`` with each tensor ``t`` in it replaced by ``fn(t)``, in ``tensors_in`` order."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple takes its fields one by one
        return type(x)(*(map_tensors(fn, v) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(map_tensors(fn, v) for v in x)
    if isinstance(x, dict):
        return {k: map_tensors(fn, v) for k, v in x.items()}
    return x


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if not t.is_inference():
        return t.to(device)
    # A tensor made under torch.inference_mode() cannot enter autograd; a copy made outside it can.
    with torch.inference_mode(False):
        return t.to(device, copy=True)


def check_batch(batch: Any, model: torch.nn.Module) -> tuple[Any, Any]:
    """Return ``(inputs, targets)`` on the model's device; reject non-pairs and NaN/Inf inputs."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        got = (
            f"a {type(batch).__name__} of length {len(batch)}"
            if isinstance(batch, (tuple, list))
            else f"a {type(batch).__name__}"
        )
        raise TypeError(
            f"batch must be an (inputs, targets) pair, got {got}. "
            "Pass e.g. batch=(x, y), or next(iter(loader)) if your loader yields pairs."
        )
    inputs, targets = batch
    if not tensors_in(inputs):
        raise TypeError(
            f"batch inputs must be a tensor (or a container of tensors), "
            f"got {type(inputs).__name__}."
        )
    for name, part in (("inputs", inputs), ("targets", targets)):
        for t in tensors_in(part):
            if t.is_floating_point() or t.is_complex():
                bad = ~torch.isfinite(t)
                if bad.any():
                    n = int(bad.sum())
                    where = tuple(int(i) for i in bad.nonzero()[0])
                    raise ValueError(
                        f"batch {name} contain {n} NaN/Inf value(s) (first at index {where}); "
                        "the check would measure garbage. Clean or impute the data first."
                    )
    device = model_device(model)
    return tuple(map_tensors(lambda t: _to(t, device), part) for part in (inputs, targets))


def forward(model: torch.nn.Module, inputs: Any) -> Any:
    """Call the model, turning a shape, index or type error inside it into a ValueError that
    names the input."""
    try:
        return model(inputs)
    except (RuntimeError, IndexError, TypeError) as e:
        shapes = [tuple(t.shape) for t in tensors_in(inputs)]
        shown = shapes[0] if len(shapes) == 1 else shapes
        hint = (
            "index out of range — token ids >= the embedding size? "
            if isinstance(e, IndexError)
            else ""
        )
        raise ValueError(
            f"{type(model).__name__} failed on inputs of shape {shown}: {hint}"
            f"{_first_line(e)}. Check that the batch matches what the model expects."
        ) from e


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _shape(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def compute_loss(loss_fn: LossFn, outputs: Any, targets: Any) -> torch.Tensor:
    """Call ``loss_fn(outputs, targets)`` and insist on a finite-typed scalar tensor."""
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be callable as loss_fn(outputs, targets), got {type(loss_fn).__name__}."
        )
    try:
        loss = loss_fn(outputs, targets)
    except TypeError as e:  # most often the wrong arity: loss_fn(outputs) or a 3-argument one
        raise TypeError(
            f"loss_fn failed on outputs of shape {_shape(outputs)} and targets of shape "
            f"{_shape(targets)}: {_first_line(e)}. It must be callable as "
            "loss_fn(outputs, targets) -> scalar tensor."
        ) from e
    except (RuntimeError, IndexError, ValueError) as e:  # ValueError: e.g. batch size mismatch
        raise ValueError(
            f"loss_fn failed on outputs of shape {_shape(outputs)} and targets of shape "
            f"{_shape(targets)}: {_first_line(e)}. Check the target shape and dtype the loss "
            "expects."
        ) from e
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}.")
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn returned a tensor of shape {tuple(loss.shape)}, not a scalar. "
            "Reduce it (reduction='mean' or .mean()) so it can be minimised."
        )
    if not loss.is_floating_point():
        raise TypeError(f"loss_fn returned a {loss.dtype} tensor; it must be floating point.")
    return loss.reshape(())


def check_seed(seed: Any, name: str = "seed") -> int:
    """One rule for every ``seed``: an int in [0, 2**64), what ``torch.manual_seed`` accepts."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}.")
    if not 0 <= seed < 2**64:
        raise ValueError(f"{name}={seed} is outside [0, 2**64), the range torch can be seeded with")
    return seed


def check_step(step: Any) -> Step | None:
    if step is not None and not callable(step):
        raise TypeError(f"step must be callable as step(batch) -> loss, got {type(step).__name__}.")
    return step
