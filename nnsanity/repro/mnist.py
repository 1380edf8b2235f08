"""MNIST the way network2.py split it, loaded once per process.

Nielsen's ``mnist.pkl.gz`` is the official 60,000-image training file cut into its first 50,000
images (training) and last 10,000 (validation), plus the official 10,000 test images; pixels are
``uint8 / 256``. We read torchvision's copy of the same idx files.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

N_TRAIN = 50_000
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class MNIST:
    """Nielsen's split: images as float32 ``(n, 784)`` in [0, 0.996], labels as int64 ``(n,)``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    validation_x: torch.Tensor
    validation_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    root: Path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nnsanity"


def _has_raw_files(root: Path) -> bool:
    raw = root / "MNIST" / "raw"
    return all((raw / f).exists() or (raw / f"{f}.gz").exists() for f in RAW_FILES)


def mnist(root: str | os.PathLike[str] | None = None) -> MNIST:
    """Load MNIST in network2's split.

    ``root`` (or ``NNSANITY_DATA_DIR``) names a folder that already holds torchvision's layout,
    ``ROOT/MNIST/raw/*-ubyte``; it is only read, never written, so a read-only copy works. Without
    either, MNIST is downloaded on first use into ``~/.cache/nnsanity`` (``$XDG_CACHE_HOME``
    respected). Raises ``FileNotFoundError`` saying where it looked and how to fix it.
    """
    if root is None and os.environ.get("NNSANITY_DATA_DIR"):
        root = os.environ["NNSANITY_DATA_DIR"]
    return _load(Path(root).expanduser().resolve() if root is not None else None)


@functools.lru_cache(maxsize=4)
def _load(root: Path | None) -> MNIST:
    try:
        from torchvision.datasets import MNIST as TorchvisionMNIST
    except ImportError as e:
        raise ImportError(
            "nnsanity.repro.mnist.mnist needs torchvision: pip install 'nnsanity[repro]'"
        ) from e

    if root is not None:
        if not _has_raw_files(root):
            raise FileNotFoundError(
                f"no MNIST found under {root / 'MNIST' / 'raw'} (expected {', '.join(RAW_FILES)}). "
                "Point --nnsanity-data-dir / NNSANITY_DATA_DIR at the folder that contains "
                "MNIST/raw/, or leave both unset to download into "
                f"{default_cache_dir()}."
            )
        download = False
    else:
        root, download = default_cache_dir(), True

    try:
        train = TorchvisionMNIST(str(root), train=True, download=download)
        test = TorchvisionMNIST(str(root), train=False, download=download)
    except (OSError, RuntimeError) as e:  # no network, a proxy, a full disk
        raise FileNotFoundError(
            f"MNIST is not in {root / 'MNIST' / 'raw'} and could not be downloaded there ({e}). "
            "Download the four idx files into that folder by hand, or point "
            "--nnsanity-data-dir / NNSANITY_DATA_DIR at a folder containing MNIST/raw/."
        ) from e

    def pixels(images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), 784).float() / 256

    x, y = pixels(train.data), train.targets.long()
    return MNIST(
        train_x=x[:N_TRAIN],
        train_y=y[:N_TRAIN],
        validation_x=x[N_TRAIN:],
        validation_y=y[N_TRAIN:],
        test_x=pixels(test.data),
        test_y=test.targets.long(),
        root=root,
    )
