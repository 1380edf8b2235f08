"""Structured batches and outputs: find, replace and classify the tensors inside them.

Models take and return more than one tensor: a tokenizer's ``BatchEncoding`` (a ``UserDict``),
dicts, nested tuples and lists, namedtuples, dataclasses; Hugging Face models return a
``ModelOutput`` (an ordered dict that is also a dataclass), others a tuple ``(logits, aux_loss)``.
A tensor inside is addressed by its *path*, the keys, indices and field names that lead to it.
Anything that is not a tensor or a container (an int, a cache object) is carried along untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch

Path = tuple[str | int, ...]
Role = Literal["data", "structure"]

# Keys of a mapping batch that hold the targets, as Hugging Face models and Trainer name them.
LABEL_KEYS = (
    "labels",
    "label",
    "label_ids",
    "start_positions",
    "end_positions",
    "next_sentence_label",
    "mc_labels",
    "targets",  # nanoGPT's and minGPT's name: model(idx, targets)
    "target",
)
# Words in an input's name that make it structure (a mask, lengths, positions, segment or type
# ids, a cache): it says how to read the data, so a check that perturbs data keeps it as it is.
STRUCTURE_WORDS = (
    "mask", "length", "lens", "position", "token_type", "segment", "cache", "offset",
    "edge_index",  # a graph's wiring (PyTorch Geometric): changing it rewires the graph
)  # fmt: skip
# Whole names that make an input structure: PyTorch Geometric's graph id of every node, and the
# offsets of its graphs.
STRUCTURE_NAMES = ("batch", "ptr")


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _is_dataclass_instance(x: Any) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def _children(x: Any) -> list[tuple[str | int, Any]] | None:
    """The (key, value) pairs of a container, or None for a leaf."""
    if isinstance(x, Mapping):  # before dataclasses: a ModelOutput is both
        return list(x.items())
    if isinstance(x, (list, tuple)):
        return list(enumerate(x))
    if _is_dataclass_instance(x):
        return [(f.name, getattr(x, f.name)) for f in dataclasses.fields(x)]
    return None


def _rebuild(x: Any, values: list[Any]) -> Any:
    """A container like ``x`` holding ``values`` in place of its children's values."""
    if isinstance(x, Mapping):
        items = dict(zip(list(x.keys()), values, strict=True))
        if type(x) is dict:
            return items
        make: Any = type(x)
        try:  # ModelOutput(**fields), BatchEncoding(dict), UserDict(dict), OrderedDict(dict)
            return make(**items) if _is_dataclass_instance(x) else make(items)
        except Exception:  # a mapping type that cannot be built from a dict
            return items
    if _is_namedtuple(x):
        return type(x)(*values)
    if isinstance(x, (list, tuple)):
        return type(x)(values)
    if _is_dataclass_instance(x):
        names = [f.name for f in dataclasses.fields(x)]
        return dataclasses.replace(x, **dict(zip(names, values, strict=True)))
    raise TypeError(f"not a container: {type(x).__name__}")


def leaves(x: Any, path: Path = ()) -> Iterator[tuple[Path, torch.Tensor]]:
    """Every tensor in ``x`` with its path, in order (depth first, keys in insertion order)."""
    if isinstance(x, torch.Tensor):
        yield path, x
        return
    children = _children(x)
    for key, value in children or ():
        yield from leaves(value, (*path, key))


def tensors_in(x: Any) -> list[torch.Tensor]:
    """The tensors in ``x``, in :func:`leaves` order."""
    return [t for _, t in leaves(x)]


def map_leaves(fn: Callable[[Path, torch.Tensor], Any], x: Any, path: Path = ()) -> Any:
    """``x`` with each tensor ``t`` at ``path`` replaced by ``fn(path, t)``."""
    if isinstance(x, torch.Tensor):
        return fn(path, x)
    children = _children(x)
    if children is None:
        return x
    return _rebuild(x, [map_leaves(fn, v, (*path, k)) for k, v in children])


def map_tensors(fn: Callable[[torch.Tensor], Any], x: Any) -> Any:
    """``x`` with each tensor ``t`` replaced by ``fn(t)``."""
    return map_leaves(lambda _, t: fn(t), x)


def get_at(x: Any, path: Path) -> Any:
    for key in path:
        children = dict(_children(x) or ())
        x = children[key]
    return x


def replace_at(x: Any, path: Path, value: Any) -> Any:
    """``x`` with the entry at ``path`` replaced by ``value`` (containers rebuilt, not mutated)."""
    if not path:
        return value
    children = _children(x)
    if children is None:
        raise KeyError(path)
    head, rest = path[0], path[1:]
    return _rebuild(x, [replace_at(v, rest, value) if k == head else v for k, v in children])


def describe(path: Path, root: str = "inputs") -> str:
    """``inputs['input_ids']``, ``inputs[1]``: how a user would write the path."""
    return root + "".join(f"[{k!r}]" for k in path)


def _name(path: Path) -> str | None:
    """The innermost key or field name on the path, if any."""
    return next((k for k in reversed(path) if isinstance(k, str)), None)


def roles(x: Any, perturb: Sequence[Any] | None = None) -> dict[Path, Role]:
    """Which tensors of the inputs ``x`` are data (a check may change them) and which structure.

    By default: float tensors are data, bool tensors structure; a tensor whose name (its mapping
    key or field) contains a word of ``STRUCTURE_WORDS`` (``attention_mask``, ``lengths``,
    ``position_ids``, ``token_type_ids``, ``edge_index``) or who is named ``batch`` or ``ptr``
    (PyTorch Geometric's graph ids and offsets) is structure; other integer tensors (token ids)
    are data when they are named or come first; following another tensor in a tuple or list, a
    1-D one is structure (per-sample lengths: ``(x, lengths)``) and one of 2 or more dims is
    data (a decoder's tokens: ``(src, tgt_in)``) unless it holds only 0s and 1s (an unnamed
    mask) or each row counts 0, 1, 2, ... (positions); so is an unnamed float tensor of zeros
    that follows another (an RNN's initial state, ``(tokens, (h0, c0))``: it holds no data to
    change). ``perturb`` lists the data instead: keys, indices or whole paths; everything else
    is structure.
    """
    found = list(leaves(x))
    if perturb is not None:
        chosen = [p if isinstance(p, tuple) else (p,) for p in perturb]
        out: dict[Path, Role] = {}
        for path, _ in found:
            out[path] = "data" if any(path[: len(c)] == c for c in chosen) else "structure"
        return out
    out = {}
    for i, (path, t) in enumerate(found):
        name = _name(path)
        worded = name and (
            any(w in name.lower() for w in STRUCTURE_WORDS) or name in STRUCTURE_NAMES
        )
        if t.dtype == torch.bool or worded:
            out[path] = "structure"
        elif i > 0 and name is None and t.is_floating_point() and not t.any():
            out[path] = "structure"  # a recurrent state starting at zeros: (x, (h0, c0))
        elif t.is_floating_point() or t.is_complex() or name is not None or i == 0:
            out[path] = "data"
        else:
            out[path] = "data" if _tokens(t) else "structure"
    return out


def _tokens(t: torch.Tensor) -> bool:
    """An unnamed integer tensor that reads as token ids: 2-D or more, not a 0/1 mask, and not
    positions (every row 0, 1, 2, ...)."""
    if t.dim() < 2 or t.numel() == 0:
        return False
    if bool(((t == 0) | (t == 1)).all()):
        return False
    positions = torch.arange(t.shape[-1], device=t.device)
    return not bool((t == positions).all())


def check_perturb(x: Any, perturb: Any) -> list[Any] | None:
    """Validate ``perturb=`` against the inputs: every entry must name at least one tensor."""
    if perturb is None:
        return None
    items = [perturb] if isinstance(perturb, (str, int)) else list(perturb)
    paths = [p for p, _ in leaves(x)]
    for item in items:
        c = item if isinstance(item, tuple) else (item,)
        if not any(p[: len(c)] == c for p in paths):
            shown = ", ".join(describe(p) for p in paths) or "none"
            raise ValueError(
                f"perturb= names {item!r}, which is no tensor of the inputs (they hold: {shown}). "
                "Pass the keys (or indices) of the inputs a check may change."
            )
    return items


def select_output(outputs: Any, output: Any = None) -> tuple[torch.Tensor, Path | None]:
    """The model output the checks judge (the logits), and its path inside ``outputs``.

    ``output`` picks it: a key or attribute name (``"logits"``), an index into a tuple, or a
    callable ``outputs -> tensor`` (then the path is None). By default, in this order: a tensor
    output itself; in a mapping or ``ModelOutput`` the ``"logits"`` entry, else the first
    floating-point tensor of at least one dimension that is not ``"loss"``; in a tuple or list
    the first floating-point tensor of at least one dimension (so ``(logits, aux_loss)`` and
    ``(loss, logits)`` both give the logits).
    """
    if callable(output):
        picked = output(outputs)
        if not isinstance(picked, torch.Tensor):
            raise TypeError(
                f"output= returned a {type(picked).__name__}; it must return the tensor to judge."
            )
        return picked, None
    if output is not None:
        value = dict(_children(outputs) or ()).get(output)
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"output={output!r} names no tensor of the model's outputs "
                f"({summarize(outputs)}). Pass a key, an index or a callable outputs -> tensor."
            )
        return value, (output,)
    if isinstance(outputs, torch.Tensor):
        return outputs, ()
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"], ("logits",)
    for path, t in leaves(outputs):
        if t.is_floating_point() and t.dim() >= 1 and _name(path) != "loss":
            return t, path
    raise ValueError(
        f"the model's outputs hold no floating-point tensor to judge ({summarize(outputs)}). "
        "Return the logits, or pass output= (a key, an index or a callable outputs -> tensor)."
    )


def summarize(x: Any) -> str:
    """A short description of a structure: ``dict with 'logits': (4, 12, 40), 'loss': ()``."""
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    found = list(leaves(x))
    if not found:
        return f"a {type(x).__name__} with no tensors"
    shown = ", ".join(f"{describe(p, '')}: {tuple(t.shape)}" for p, t in found[:6])
    more = f" and {len(found) - 6} more" if len(found) > 6 else ""
    return f"a {type(x).__name__} with {shown}{more}"
