"""Real architectures, built from small configs with random init (nothing is downloaded).

The models people actually train, with the batches they actually feed them: Hugging Face
transformers (a mapping batch with its labels inside, the model computing its own loss),
torchvision and timm image models, a packed LSTM with ``(x, lengths)`` inputs, a log-softmax +
NLL CNN, a model returning ``(logits, aux_loss)``, a label-smoothing LM with dict inputs and
outputs. Every applicable check must pass on every one with default arguments
(``tests/checks/test_architectures.py``); the README's compatibility table comes from them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from nnsanity.catalogue import CATALOGUE, Subject, get

# Checks every zoo model passes with defaults, asserted (with more detail) in their own test
# files; the README's compatibility table shows them beside ALL_CHECKS.
EVERY_MODEL = (
    "update_ratio", "activation_growth", "no_dying_units", "loss_stable", "input_scale",
    "no_target_leak",
)  # fmt: skip
# The catalogue's checks that need nothing a zoo model lacks: the padding checks and
# learns_signal have their own zoos (padding_zoo.py, learnable.py).
ALL_CHECKS = tuple(
    c.name
    for c in CATALOGUE
    if c.needs <= {"loss", "step", "sequence", "outputs"} and c.name not in EVERY_MODEL
)
TABLE_CHECKS = (*ALL_CHECKS, *EVERY_MODEL)


@dataclasses.dataclass(frozen=True)
class Arch:
    """How to build one zoo model and its batch, and which checks apply to it."""

    build: Callable[[], nn.Module]  # seeded inside: the same model every call
    batch: Callable[[], Any]
    loss_fn: Callable[[Any, Any], torch.Tensor] | None  # None: the model computes its loss
    causal_inputs: Callable[[Any], Any] | None = None  # the inputs of an autoregressive model
    skip: tuple[str, ...] = ()  # checks that do not apply, each for a stated reason

    @property
    def checks(self) -> tuple[str, ...]:
        return tuple(
            c
            for c in ALL_CHECKS
            if c not in self.skip and ("sequence" not in get(c).needs or self.causal_inputs)
        )


def _generator(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _quiet_transformers() -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


# -- Hugging Face transformers -----------------------------------------------------------------

VOCAB, T = 96, 16


def _token_batch(n: int = 4, pad_rows: bool = False) -> dict[str, torch.Tensor]:
    g = _generator()
    ids = torch.randint(3, VOCAB, (n, T), generator=g)
    mask = torch.ones(n, T, dtype=torch.long)
    if pad_rows:  # right padding, as a tokenizer gives a batch of unequal sentences
        for i, length in enumerate([T, T - 5, T - 2, T - 9][:n]):
            mask[i, length:] = 0
            ids[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _lm_batch() -> dict[str, torch.Tensor]:
    batch = _token_batch()
    return {**batch, "labels": batch["input_ids"].clone()}  # HF shifts the labels itself


def _gpt2() -> nn.Module:
    transformers = _quiet_transformers()
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=1,
        eos_token_id=2,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _llama() -> nn.Module:
    transformers = _quiet_transformers()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def _bert() -> nn.Module:
    transformers = _quiet_transformers()
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _bert_batch() -> dict[str, torch.Tensor]:
    batch = _token_batch(pad_rows=True)
    labels = torch.randint(0, 3, (4,), generator=_generator(2))
    return {**batch, "token_type_ids": torch.zeros_like(batch["input_ids"]), "labels": labels}


def _t5() -> nn.Module:
    transformers = _quiet_transformers()
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
        num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(config)


def _t5_batch() -> dict[str, torch.Tensor]:
    batch = _token_batch(pad_rows=True)
    labels = torch.randint(3, VOCAB, (4, 8), generator=_generator(3))
    return {**batch, "labels": labels}


def _whisper() -> nn.Module:
    transformers = _quiet_transformers()
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=8, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_source_positions=16, max_target_positions=32, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    return transformers.WhisperForConditionalGeneration(config)


def _padded_labels(n: int, t: int, vocab: int, seed: int) -> torch.Tensor:
    """Target token ids of unequal lengths, padded with -100 (as a data collator does)."""
    labels = torch.randint(3, vocab, (n, t), generator=_generator(seed))
    for i, length in enumerate([t, t - 3, t - 1, t - 5][:n]):
        labels[i, length:] = -100
    return labels


def _whisper_batch() -> dict[str, torch.Tensor]:
    # log-mel features: 8 bins x 32 frames (2 x max_source_positions, as Whisper requires)
    features = torch.randn(4, 8, 32, generator=_generator())
    return {"input_features": features, "labels": _padded_labels(4, 8, VOCAB, 3)}


def _wav2vec2() -> nn.Module:
    transformers = _quiet_transformers()
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        vocab_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0,
    )  # fmt: skip  # HF's defaults otherwise: LayerDrop 0.1, SpecAugment, CTC summed
    return transformers.Wav2Vec2ForCTC(config)


def _wav2vec2_batch() -> dict[str, torch.Tensor]:
    # 400 samples of raw audio -> 39 frames; character labels of up to 8, padded with -100
    audio = torch.randn(4, 400, generator=_generator())
    return {"input_values": audio, "labels": _padded_labels(4, 8, 12, 3)}


def _bart() -> nn.Module:
    transformers = _quiet_transformers()
    torch.manual_seed(0)
    config = transformers.BartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2,
    )  # fmt: skip
    return transformers.BartForConditionalGeneration(config)


def _seq2seq_batch() -> dict[str, torch.Tensor]:
    return {**_token_batch(pad_rows=True), "labels": _padded_labels(4, 8, VOCAB, 3)}


def _gemma2() -> nn.Module:
    transformers = _quiet_transformers()
    torch.manual_seed(0)
    config = transformers.Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        sliding_window=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip  # final_logit_softcapping=30 (the default): tanh-capped after lm_head
    return transformers.Gemma2ForCausalLM(config)


def _clip() -> nn.Module:
    transformers = _quiet_transformers()
    torch.manual_seed(0)
    text = {
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "max_position_embeddings": T, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 0,
    }  # fmt: skip
    vision = {
        "image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2,
    }  # fmt: skip
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    return transformers.CLIPModel(config)


def _clip_batch() -> dict[str, Any]:
    # image-caption pairs: the loss is contrastive over the batch, asked for by return_loss
    batch = _token_batch(n=8)
    pixels = torch.randn(8, 3, 32, 32, generator=_generator(2))
    return {**batch, "pixel_values": pixels, "return_loss": True}


def _segformer() -> nn.Module:
    transformers = _quiet_transformers()
    torch.manual_seed(0)
    config = transformers.SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
        hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
        mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=4,
    )  # fmt: skip
    return transformers.SegformerForSemanticSegmentation(config)


def _segmentation_batch() -> dict[str, torch.Tensor]:
    # masks of 8x8 regions (4x4 pixels each), as segmentation masks are piecewise constant; the
    # logits come at 1/4 of the input's size and the model upsamples them to the labels'
    g = _generator()
    pixels = torch.randn(4, 3, 32, 32, generator=g)
    regions = torch.randint(0, 4, (4, 8, 8), generator=g)
    return {
        "pixel_values": pixels,
        "labels": regions.repeat_interleave(4, 1).repeat_interleave(4, 2),
    }


def _lm_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


# -- torchvision and timm ----------------------------------------------------------------------


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    g = _generator()
    return torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        torch.manual_seed(0)
        return getattr(torchvision.models, name)(num_classes=10)

    return build


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        torch.manual_seed(0)
        return timm.create_model(name, num_classes=10, **kwargs)

    return build


def fasterrcnn(box_head: nn.Module | None = None) -> nn.Module:
    """torchvision's Faster R-CNN (RPN, RoIAlign, two-MLP box head, class-specific box
    regression) around a 2-conv BatchNorm backbone, 3 classes (background and 2), 64x64 images:
    in train mode ``model(images, targets)`` returns its 4 losses as a dict, in eval mode a list
    of detections per image. ``box_head`` replaces the two-MLP head (a planted bug's)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
    )  # fmt: skip
    backbone.out_channels = 32  # type: ignore[assignment]
    anchors = AnchorGenerator(sizes=((8, 16, 32),), aspect_ratios=((0.5, 1.0, 2.0),))
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=4, sampling_ratio=2),
        box_head=box_head or TwoMLPHead(32 * 4 * 4, 64),
        box_predictor=FastRCNNPredictor(64, 3),
        min_size=64, max_size=64,
        rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
        rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=32, box_batch_size_per_image=32,
    )  # fmt: skip


def detection_batch(seed: int = 1) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """torchvision's detection batch: a list of 2 images (3, 64, 64) in [0, 1], a list of 2
    targets of 2 boxes each (``boxes`` (2, 4) as x1, y1, x2, y2 in pixels, ``labels`` in 1..2).
    A box is brighter than the background, so the images carry what the boxes say."""
    g = _generator(seed)
    images, targets = [], []
    for _ in range(2):
        xy = torch.randint(0, 32, (2, 2), generator=g).float()
        boxes = torch.cat([xy, xy + torch.randint(12, 30, (2, 2), generator=g).float()], 1)
        image = 0.3 * torch.rand(3, 64, 64, generator=g)
        for x1, y1, x2, y2 in boxes.long().tolist():
            image[:, y1:y2, x1:x2] += 0.5
        images.append(image.clamp(0, 1))
        targets.append({"boxes": boxes, "labels": torch.randint(1, 3, (2,), generator=g)})
    return images, targets


# -- patterns people post ----------------------------------------------------------------------


class PackedRegressor(nn.Module):
    """A bidirectional LSTM over variable-length sequences: inputs ``(x, lengths)``, MSE."""

    def __init__(self, d_in: int = 4, hidden: int = 16):
        super().__init__()
        self.rnn = nn.LSTM(d_in, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, 1)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, lengths = inputs
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.out(torch.cat([h[0], h[1]], dim=-1))


def _packed_lstm() -> nn.Module:
    torch.manual_seed(0)
    return PackedRegressor()


def _sequences() -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    g = _generator()
    lengths = torch.tensor([9, 4, 7, 3, 9, 5, 8, 6, 2, 9, 7, 5])
    x = torch.randn(12, 9, 4, generator=g)
    x[torch.arange(9) >= lengths[:, None]] = 0.0
    y = torch.stack([x[i, : lengths[i], 0].sum() for i in range(12)]).unsqueeze(1)
    return (x, lengths), (y - y.mean()) / y.std()


class MnistExampleNet(nn.Module):
    """pytorch/examples mnist/main.py, scaled to 12x12 images: it returns log_softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 16, 3)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = self.dropout2(F.relu(self.fc1(torch.flatten(self.dropout1(x), 1))))
        return F.log_softmax(self.fc2(x), dim=1)


def _mnist_example() -> nn.Module:
    torch.manual_seed(0)
    return MnistExampleNet()


def _small_images() -> tuple[torch.Tensor, torch.Tensor]:
    g = _generator()
    return torch.randn(16, 1, 12, 12, generator=g), torch.randint(0, 10, (16,), generator=g)


class MoEClassifier(nn.Module):
    """Two experts behind a softmax gate, returning ``(logits, aux_loss)`` (a load-balance loss)."""

    def __init__(self, d: int = 20, hidden: int = 32, experts: int = 2) -> None:
        super().__init__()
        self.gate = nn.Linear(d, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 10))
            for _ in range(experts)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.gate(x).softmax(-1)  # (B, experts)
        logits = torch.stack([e(x) for e in self.experts], -1)  # (B, 10, experts)
        load = weights.mean(0)
        return (logits * weights[:, None, :]).sum(-1), (load * load).sum() * len(self.experts)


def _moe() -> nn.Module:
    torch.manual_seed(0)
    return MoEClassifier()


def _moe_loss(outputs: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    logits, aux = outputs
    return F.cross_entropy(logits, y) + 0.01 * aux


def _vectors() -> tuple[torch.Tensor, torch.Tensor]:
    g = _generator()
    return torch.randn(16, 20, generator=g), torch.randint(0, 10, (16,), generator=g)


class SmoothedLM(nn.Module):
    """A GPT-2-style LM in a user's own code: dict in, dict out, tied head, 0.02 init."""

    def __init__(self, vocab: int = 40, t: int = 12, d: int = 32) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(t, d)
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight
        nn.init.normal_(self.tok.weight, 0, 0.02)
        nn.init.normal_(self.pos.weight, 0, 0.02)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        t = ids.shape[1]
        h = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).triu(1)
        a = self.ln1(h)
        h = h + self.attn(a, a, a, attn_mask=causal, key_padding_mask=mask == 0)[0]
        h = h + self.mlp(self.ln2(h))
        return {"logits": self.head(self.ln_f(h))}


def _smoothed_lm() -> nn.Module:
    torch.manual_seed(0)
    return SmoothedLM()


def _smoothed_batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    ids = torch.randint(0, 40, (6, 12), generator=_generator())
    labels = torch.cat([ids[:, 1:], torch.full((6, 1), -100)], 1)
    return {"input_ids": ids, "attention_mask": torch.ones(6, 12, dtype=torch.long)}, labels


def _smoothed_loss(out: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    logits = out["logits"]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
        label_smoothing=0.1,
    )  # fmt: skip


class DropoutCNN(nn.Module):
    """A VGG-style CNN with BatchNorm and heavy dropout (0.5) before every linear layer."""

    def __init__(self) -> None:
        super().__init__()

        def stage(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.MaxPool2d(2),
            )  # fmt: skip

        self.features = nn.Sequential(stage(3, 16), stage(16, 32), stage(32, 64))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _dropout_cnn() -> nn.Module:
    torch.manual_seed(0)
    return DropoutCNN()


class TransformerClassifier(nn.Module):
    """A small post-LN transformer encoder over token ids with mean pooling: slow to start."""

    def __init__(self, vocab: int = VOCAB, d: int = 32, layers: int = 2, classes: int = 4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(T, d))
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.tok(ids) + self.pos[: ids.shape[1]]).mean(1))


def _transformer_classifier() -> nn.Module:
    torch.manual_seed(0)
    return TransformerClassifier()


def _sentences() -> tuple[torch.Tensor, torch.Tensor]:
    g = _generator()
    return torch.randint(0, VOCAB, (8, T), generator=g), torch.randint(0, 4, (8,), generator=g)


class GRUSeq2Seq(nn.Module):
    """A GRU encoder-decoder over token ids, called as ``model((src, tgt_in))``: the decoder
    reads the targets shifted right (teacher forcing) and the encoder's last state, the context
    vector, is added to each of its states. ``batch_first=False`` plants the classic bug: the
    decoder reads (B, T, D) as (T, B, D), mixing the samples through ``tgt_in`` only (the
    context stays per sample), so only a change of ``tgt_in`` shows it."""

    def __init__(self, vocab: int = 24, d: int = 32, batch_first: bool = True) -> None:
        super().__init__()
        self.src_emb, self.tgt_emb = nn.Embedding(vocab, d), nn.Embedding(vocab, d)
        self.encoder = nn.GRU(d, d, batch_first=True)
        self.decoder = nn.GRU(d, d, batch_first=batch_first)
        self.out = nn.Linear(d, vocab)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        src, tgt_in = inputs
        _, h = self.encoder(self.src_emb(src))
        states, _ = self.decoder(self.tgt_emb(tgt_in))
        return self.out(torch.tanh(states + h[-1][:, None]))  # (B, T_tgt, vocab)


def _gru_seq2seq() -> nn.Module:
    torch.manual_seed(0)
    return GRUSeq2Seq()


def _translation_pairs() -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    g = _generator()
    src = torch.randint(3, 24, (8, 10), generator=g)
    tgt = torch.randint(3, 24, (8, 7), generator=g)
    tgt_in = torch.cat([torch.full((8, 1), 1), tgt[:, :-1]], 1)  # BOS = 1, shifted right
    return (src, tgt_in), tgt


def _token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class GCN(nn.Module):
    """Kipf & Welling's graph convolution in plain torch, on a PyTorch Geometric style batch:
    ``model(x=(N, F) node rows, edge_index=(2, E), batch=(N,) graph ids)``; two layers of
    D^-1/2 (A + I) D^-1/2 X W, then mean pooling per graph: (G, classes) logits."""

    def __init__(self, d_in: int = 8, d: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Linear(d_in, d), nn.Linear(d, d)])
        self.head = nn.Linear(d, classes)

    def propagate(self, h: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        loops = torch.arange(n, device=h.device).expand(2, n)
        src, dst = torch.cat([edge_index, loops], 1)
        degree = torch.zeros(n, device=h.device).index_add_(
            0, dst, torch.ones_like(dst, dtype=h.dtype)
        )
        norm = (degree[src] * degree[dst]).rsqrt()[:, None]
        return torch.zeros_like(h).index_add_(0, dst, h[src] * norm)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor
    ) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(self.propagate(conv(x), edge_index))
        g = int(batch.max()) + 1
        pooled = torch.zeros(g, x.shape[1], device=x.device).index_add_(0, batch, x)
        counts = torch.bincount(batch, minlength=g).clamp(min=1)[:, None]
        return self.head(pooled / counts)


def _gcn() -> nn.Module:
    torch.manual_seed(0)
    return GCN()


def _graph_batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """8 random graphs of 4-10 nodes (58 in all), undirected ring-plus-chords edges, collated
    as PyG does: node rows stacked, edge ids offset, ``batch`` the graph of each node."""
    g = _generator()
    sizes = [7, 4, 9, 6, 10, 8, 5, 9]
    edges, ids, start = [], [], 0
    for k, n in enumerate(sizes):
        ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
        chords = torch.randint(0, n, (2, 2), generator=g)
        both = torch.cat([ring, chords], 1)
        edges.append(torch.cat([both, both.flip(0)], 1) + start)
        ids.append(torch.full((n,), k))
        start += n
    x = torch.randn(start, 8, generator=g)
    inputs = {"x": x, "edge_index": torch.cat(edges, 1), "batch": torch.cat(ids)}
    return inputs, torch.randint(0, 3, (len(sizes),), generator=g)


ZOO: dict[str, Arch] = {
    "gpt2": Arch(_gpt2, _lm_batch, None, causal_inputs=_lm_inputs),
    "llama": Arch(_llama, _lm_batch, None, causal_inputs=_lm_inputs),
    "bert_classifier": Arch(_bert, _bert_batch, None),
    "t5": Arch(_t5, _t5_batch, None),
    "whisper": Arch(_whisper, _whisper_batch, None),
    "wav2vec2_ctc": Arch(_wav2vec2, _wav2vec2_batch, None),
    "bart": Arch(_bart, _seq2seq_batch, None),
    "gemma2": Arch(_gemma2, _lm_batch, None, causal_inputs=_lm_inputs),
    # batch independence does not apply to the default output, the (B, B) image-text logits,
    # which compare every image with every caption of the batch by design (output="image_embeds"
    # judges the embeddings instead: tests/checks/test_real_families.py)
    "segformer": Arch(_segformer, _segmentation_batch, None),
    "clip": Arch(_clip, _clip_batch, None, skip=("batch_independence",)),
    "torchvision_resnet18": Arch(_torchvision("resnet18"), _images, F.cross_entropy),
    "torchvision_mobilenet_v3_small": Arch(
        _torchvision("mobilenet_v3_small"), _images, F.cross_entropy
    ),
    # torchvision's detectors: losses in train mode, detections in eval mode; the loss is
    # their sum. init_loss judges logits, which such a model never returns with its loss.
    "torchvision_fasterrcnn": Arch(fasterrcnn, detection_batch, None, skip=("init_loss",)),
    "timm_resnet18": Arch(_timm("resnet18"), _images, F.cross_entropy),  # zero_init_last
    "timm_vit_tiny": Arch(_timm("vit_tiny_patch16_224", img_size=32), _images, F.cross_entropy),
    # LayerScale (init_values=1e-5, as BEiT/EVA/CaiT/DeiT-III): every sample's output at init
    # is the same to 1e-5, which must not read as "the loss does not pair outputs with targets"
    "timm_vit_layerscale": Arch(
        _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, init_values=1e-5),
        _images,
        F.cross_entropy,
    ),
    "packed_lstm": Arch(_packed_lstm, _sequences, F.mse_loss),
    "log_softmax_nll_cnn": Arch(_mnist_example, _small_images, F.nll_loss),
    "logits_and_aux_loss": Arch(_moe, _vectors, _moe_loss),
    "dropout_batchnorm_cnn": Arch(_dropout_cnn, _images, F.cross_entropy),
    "transformer_classifier": Arch(_transformer_classifier, _sentences, F.cross_entropy),
    "gru_seq2seq": Arch(_gru_seq2seq, _translation_pairs, _token_loss),
    "gcn_graph_batch": Arch(_gcn, _graph_batch, F.cross_entropy),
    "label_smoothing_lm": Arch(
        _smoothed_lm, _smoothed_batch, _smoothed_loss, causal_inputs=lambda b: b[0]
    ),
}


def run_check(check: str, arch: Arch, model: torch.nn.Module, batch: Any) -> Any:
    """The check as a new user calls it: the model, the batch, the loss (if any), defaults."""
    inputs = arch.causal_inputs(batch) if arch.causal_inputs is not None else None
    subject = Subject(
        model=model,
        batch=batch,
        loss_fn=arch.loss_fn,
        inputs=inputs,
        autoregressive=arch.causal_inputs is not None,
    )
    return get(check).measure(subject)
