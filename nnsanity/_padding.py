"""Where a batch is padded, and how to change what sits at the padded positions.

The padding checks (padding invariance, loss masking) share this. Padding is found, in order:

1. ``padding=``: a bool tensor ``(B, T)``, True at padded positions (the polarity of PyTorch's
   ``key_padding_mask``), or an int: the token id that marks padding;
2. an ``attention_mask`` among the inputs (the Hugging Face convention: 1 = real, 0 = padding);
3. an ``nn.Embedding`` with ``padding_idx=p`` in the model: the positions whose token id is p.

What sits at the padded positions is changed where the model first reads it: the vectors an
``nn.Embedding`` makes of the token ids there (the ids themselves cannot change without
un-padding a model that finds its padding from them, and one that also derives positions or
lengths from them must see the same ids), else the data inputs there (float features). The mask,
the ids and every other structure input stay as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from nnsanity._arguments import check_int
from nnsanity._harness import Harness
from nnsanity._perturbation import _different
from nnsanity._structures import Path, describe, leaves, select_output, tensors_in
from nnsanity.seeding import seed_torch

MASK_KEYS = ("attention_mask",)
IGNORE_INDEX = -100  # the default ignore_index of F.cross_entropy and Hugging Face losses


@dataclasses.dataclass(frozen=True)
class Padding:
    """The padded positions of a batch and how to change what is there."""

    mask: torch.Tensor  # (B, T) bool, True at padded positions, on the model's device
    source: str  # how it was found, as a message says it
    pad_id: int | None = None  # the token id that marks padding, where that defines it
    embeddings: tuple[torch.nn.Embedding, ...] = ()  # the modules that embed the ids

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.mask.shape[0]), int(self.mask.shape[1])


def check_padding(padding: Any) -> torch.Tensor | int | None:
    """Validate ``padding=`` before any work: None, a bool tensor (True = padded) or an int."""
    if padding is None:
        return None
    if isinstance(padding, torch.Tensor):
        if padding.dtype != torch.bool:
            raise TypeError(
                f"padding= must be a bool tensor, True at padded positions (PyTorch's "
                f"key_padding_mask polarity), got a {padding.dtype} tensor; from a Hugging Face "
                "attention mask pass attention_mask == 0."
            )
        if padding.dim() != 2:
            raise ValueError(
                f"padding= must be a (batch, positions) mask, got shape {tuple(padding.shape)}."
            )
        return padding
    if isinstance(padding, bool):
        raise TypeError("padding= must be a bool tensor or a pad token id (an int), not a bool.")
    try:
        return check_int(padding, "padding= (a pad token id)")
    except TypeError:
        raise TypeError(
            f"padding= must be a bool tensor (True at padded positions) or the pad token id "
            f"(an int), got {type(padding).__name__}."
        ) from None


def _mask_in_inputs(h: Harness) -> tuple[Path, torch.Tensor] | None:
    for path, t in leaves(h.inputs):
        if path and isinstance(path[-1], str) and path[-1] in MASK_KEYS:
            return path, t
    return None


def _ids_read(h: Harness, pad_id: int | None) -> tuple[torch.nn.Embedding, torch.Tensor] | None:
    """The first embedding (in forward order) that reads a (B, T) tensor holding its pad id
    (``pad_id``, or the embedding's own ``padding_idx`` when None), with those ids."""
    b = h.batch_size
    found: list[tuple[torch.nn.Embedding, torch.Tensor]] = []

    def pre_hook(m: torch.nn.Module, args: Any) -> None:
        assert isinstance(m, torch.nn.Embedding)
        pad = m.padding_idx if pad_id is None else pad_id
        ids = args[0] if args else None
        if found or pad is None or not isinstance(ids, torch.Tensor):
            return
        if ids.dim() == 2 and ids.shape[0] == b and bool((ids == pad).any()):
            found.append((m, ids.detach().clone()))

    embeddings = [
        m
        for m in h.model.modules()
        if isinstance(m, torch.nn.Embedding) and (pad_id is not None or m.padding_idx is not None)
    ]
    handles = [m.register_forward_pre_hook(pre_hook) for m in embeddings]
    try:
        with torch.no_grad():
            h.forward()
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _embeddings_reading(h: Harness, shape: tuple[int, ...]) -> tuple[torch.nn.Embedding, ...]:
    """The embeddings that read an integer tensor of the padding's shape (the token ids)."""
    found: dict[int, torch.nn.Embedding] = {}

    def pre_hook(m: torch.nn.Module, args: Any) -> None:
        ids = args[0] if args else None
        if isinstance(ids, torch.Tensor) and tuple(ids.shape) == shape:
            assert isinstance(m, torch.nn.Embedding)
            found.setdefault(id(m), m)

    embeddings = [m for m in h.model.modules() if isinstance(m, torch.nn.Embedding)]
    handles = [m.register_forward_pre_hook(pre_hook) for m in embeddings]
    try:
        with torch.no_grad():
            h.forward()
    finally:
        for handle in handles:
            handle.remove()
    return tuple(found.values())


def _no_padding(source: str) -> ValueError:
    return ValueError(
        f"the padding is marked by {source}, but this batch holds none; pass a batch of "
        "sequences of unequal lengths padded to a common length (a tokenizer's padding=True, "
        "pad_sequence), or padding= (a bool mask, True at padded positions)."
    )


def _given_mask(h: Harness, padding: torch.Tensor, readers: bool) -> Padding:
    b = h.batch_size
    if padding.shape[0] != b:
        raise ValueError(
            f"padding= has {padding.shape[0]} rows but the batch has {b} samples; pass one row "
            "per sample."
        )
    mask = padding.to(next(iter(h.model.parameters())).device)
    if not bool(mask.any()):
        raise _no_padding("padding=")
    if bool(mask.all()):
        raise ValueError("padding= marks every position as padding; nothing real is left.")
    found = _embeddings_reading(h, mask.shape) if readers else ()
    return Padding(mask=mask, source="padding= (your mask)", embeddings=found)


def _attention_mask(h: Harness, path: Path, am: torch.Tensor, readers: bool) -> Padding:
    source = f"{describe(path)} == 0"
    if am.dim() != 2 or am.shape[0] != h.batch_size:
        raise ValueError(
            f"{describe(path)} has shape {tuple(am.shape)}, not (batch, positions); pass "
            "padding= (a bool (B, T) mask, True at padded positions)."
        )
    if am.dtype.is_floating_point and bool((am < 0).any()):
        raise ValueError(
            f"{describe(path)} holds negative values (an additive mask, -inf at padding); pass "
            "padding= (a bool mask, True at padded positions)."
        )
    mask = am == 0
    if not bool(mask.any()):
        raise _no_padding(source)
    found = _embeddings_reading(h, mask.shape) if readers else ()
    return Padding(mask=mask, source=source, embeddings=found)


def _token_padding(h: Harness, padding: int | None) -> Padding:
    read = _ids_read(h, padding)
    if read is None:
        if padding is not None:
            raise ValueError(
                f"no nn.Embedding of {type(h.model).__name__} reads token id {padding} in this "
                "batch; pass the pad id the batch holds, or padding= as a bool mask."
            )
        pads = sorted(
            m.padding_idx
            for m in h.model.modules()
            if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None
        )
        if pads:
            raise _no_padding(f"nn.Embedding padding_idx={pads[0]}")
        raise ValueError(
            f"no padding found: the inputs hold no 'attention_mask' and no nn.Embedding of "
            f"{type(h.model).__name__} has a padding_idx. Pass padding=: a bool (B, T) mask, True "
            "at padded positions (torch.arange(T) >= lengths[:, None] for (x, lengths) inputs), "
            "or the pad token id."
        )
    module, ids = read
    pad = module.padding_idx if padding is None else padding
    assert pad is not None
    name = next((n for n, m in h.model.named_modules() if m is module), "")
    via = f"padding_idx={pad}" if padding is None else f"padding={pad}"
    mask = ids == pad
    if bool(mask.all()):
        raise ValueError(f"every position holds the pad id {pad}; nothing real is left.")
    return Padding(
        mask=mask,
        source=f"token id {pad} ({via} of the embedding '{name or type(module).__name__}')",
        pad_id=int(pad),
        embeddings=(module,),
    )


def target_padding(h: Harness, padding: Any) -> Padding | None:
    """An encoder-decoder's padding on the output's side: ``labels == -100`` (the Hugging Face
    data collators' ignored targets) when no ``padding=`` is given, the labels are a (B, T)
    integer tensor holding -100 whose positions are the judged output's, and the inputs hold no
    ``attention_mask`` of those positions (a decoder-only LM's mask is its targets' padding
    too, and a buggy loss may leave the pad id, not -100, in them). Call inside
    ``h.isolated(...)``: finding the output's positions takes a forward."""
    targets = h.targets
    if padding is not None or targets is None:
        return None
    labels = targets.get("labels") if isinstance(targets, Mapping) else targets
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dim() != 2:
        return None
    ignored = labels == IGNORE_INDEX
    if labels.shape[0] != h.batch_size or not bool(ignored.any()) or bool(ignored.all()):
        return None
    config = getattr(h.model, "config", None)
    found = _mask_in_inputs(h)
    same = found is not None and tuple(found[1].shape) == tuple(labels.shape)
    if same and not getattr(config, "is_encoder_decoder", False):
        return None
    with torch.no_grad():
        logits = h.logits(h.forward())
    if position_dim(logits.shape, *labels.shape) is None:
        return None
    return Padding(mask=ignored, source=f"labels == {IGNORE_INDEX} (the targets' padding)")


def find_padding(
    h: Harness, padding: torch.Tensor | int | None, *, readers: bool = True
) -> Padding:
    """The batch's padding; call inside ``h.isolated(...)`` (finding the embeddings that read
    the ids takes a forward). ``readers=False``: a mask's readers are not needed."""
    if isinstance(padding, torch.Tensor):
        return _given_mask(h, padding, readers)
    if padding is None and (found := _mask_in_inputs(h)) is not None:
        return _attention_mask(h, *found, readers)
    return _token_padding(h, padding)


def changed_inputs(h: Harness, pad: Padding, g: torch.Generator) -> Any:
    """The inputs with the data entries at padded positions changed (a mask, and no embedding
    reading the ids); tokens move to other tokens of the batch, floats are redrawn
    (``_perturbation._different``)."""
    b, t = pad.shape
    changed = False

    def change(path: Path, x: torch.Tensor) -> torch.Tensor:
        nonlocal changed
        if x.dim() < 2 or tuple(x.shape[:2]) != (b, t):
            return x
        where = pad.mask.to(x.device).view(b, t, *([1] * (x.dim() - 2)))
        changed = True
        return torch.where(where, _different(x, g, describe(path)), x)

    inputs = h.map_data(change)
    if not changed:
        shapes = ", ".join(f"{describe(p)}: {tuple(x.shape)}" for p, x in h.data_leaves())
        raise ValueError(
            f"no data input has the padding's shape ({b}, {t}) in front (data inputs: "
            f"{shapes or 'none'}), so nothing at the padded positions can be changed; pass "
            "perturb= naming the inputs that carry the data."
        )
    return inputs


@contextlib.contextmanager
def changed_embeddings(pad: Padding, g: torch.Generator) -> Iterator[None]:
    """Inside the block, the embedding vectors at padded positions (of the pad id, or where the
    mask says, for an embedding reading ids of the mask's shape) are replaced by random ones
    with the mean and spread of the real positions'. The ids and the mask stay as they are, so
    whatever the model derives from them (position ids, lengths, its own mask) does too."""

    def hook(_: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        ids = args[0]
        if pad.pad_id is not None:
            where = ids == pad.pad_id
        elif tuple(ids.shape) == tuple(pad.mask.shape):
            where = pad.mask.to(ids.device)
        else:  # another call of a shared embedding (a decoder's ids)
            return out
        if not bool(where.any()) or not bool((~where).any()):
            return out
        real = out[~where].detach().double()
        std = float(real.std()) if real.numel() > 1 else 1.0
        std = std if std > 0 else 1.0
        noise = torch.randn(out.shape, generator=g, dtype=torch.float64)
        noise = (float(real.mean()) + std * noise).to(out.dtype).to(out.device)
        return torch.where(where.unsqueeze(-1), noise, out)

    handles = [m.register_forward_hook(hook) for m in pad.embeddings]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def batch_outputs(h: Harness, inputs: Any, around: Callable[[], Any] | None = None) -> list[Any]:
    """The model's floating-point outputs with the batch in front, as float64 (the one
    ``output=`` picks, when given), reseeded first; ``around`` is a context for the pass."""
    b = h.batch_size
    seed_torch(h.seed)
    with torch.no_grad(), around() if around else contextlib.nullcontext():
        outputs = h.forward(inputs)
    found = [select_output(outputs, h.output)[0]] if h.output is not None else tensors_in(outputs)
    return [
        o.detach().to(torch.float64)
        for o in found
        if o.is_floating_point() and o.dim() >= 1 and o.shape[0] == b
    ]


def position_dim(shape: torch.Size, b: int, t: int) -> int | None:
    """Where an output of ``shape`` has the padding's positions: dim 1 ((B, T, ...)), or dim 2
    for (B, C, T) outputs such as F.cross_entropy takes; None for per-sample outputs."""
    if len(shape) >= 2 and shape[0] == b and shape[1] == t:
        return 1
    if len(shape) >= 3 and shape[0] == b and shape[2] == t:
        return 2
    return None


def at_positions(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` with its position dim second and the rest flattened: (B, T, -1)."""
    moved = x.movedim(dim, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1)
