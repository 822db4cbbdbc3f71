"""Write tiny fake data sets in the on-disk layouts sfpk reads, for smoke tests and demos.

Images are random but class-dependent (each class has its own mean colour), so a model can
learn something from them. Every writer returns the data set folder it created and is
deterministic given ``seed``.

Example:
    >>> folder = write_fake_cifar("/tmp/data", num_classes=100, per_class=5)
    >>> splits = load_dataset("cifar100", data_dir="/tmp/data")
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

__all__ = ["write_fake_cifar", "write_fake_tiny_imagenet", "write_fake_imagenet"]


def _images(labels: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images ``[N, H, W, 3]``: a per-class colour plus noise."""
    palette = rng.integers(40, 216, size=(int(labels.max()) + 1, 3))
    noise = rng.normal(0.0, 30.0, size=(len(labels), height, width, 3))
    return np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def _cifar_batch(labels: np.ndarray, label_key: str, rng: np.random.Generator) -> dict:
    images = _images(labels, 32, 32, rng).transpose(0, 3, 1, 2).reshape(len(labels), -1)
    batch = {b"data": images, label_key.encode(): labels.tolist()}
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = (labels // 5).tolist()
    return batch


def write_fake_cifar(
    root: str | os.PathLike,
    num_classes: int = 10,
    per_class: int = 10,
    *,
    test_per_class: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a fake CIFAR-10 (``num_classes=10``) or CIFAR-100 (``100``) pickle layout.

    Args:
        root: Parent folder; ``cifar-10-batches-py/`` or ``cifar-100-python/`` is created in it.
        num_classes: 10 or 100, choosing the layout.
        per_class: Training images per class.
        test_per_class: Test images per class; defaults to ``max(1, per_class // 5)``.
        seed: Seed of the pixel and label generator.

    Returns:
        The created data set folder.

    Raises:
        ValueError: If ``num_classes`` is not 10 or 100.
    """
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes={num_classes!r} must be 10 or 100 (CIFAR layouts)")
    rng = np.random.default_rng(seed)
    test_per_class = max(1, per_class // 5) if test_per_class is None else test_per_class
    train_labels = _labels(num_classes, per_class, rng)
    test_labels = _labels(num_classes, test_per_class, rng)
    if num_classes == 10:
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for number, part in enumerate(np.array_split(train_labels, 5), start=1):
            _dump(folder / f"data_batch_{number}", _cifar_batch(part, "labels", rng))
        _dump(folder / "test_batch", _cifar_batch(test_labels, "labels", rng))
        _dump(folder / "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})
    else:
        folder = Path(root) / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        _dump(folder / "train", _cifar_batch(train_labels, "fine_labels", rng))
        _dump(folder / "test", _cifar_batch(test_labels, "fine_labels", rng))
        _dump(folder / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)]})
    return folder


def _save_jpeg(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=90)


def _wnids(num_classes: int) -> list[str]:
    return [f"n{index:08d}" for index in range(num_classes)]


def write_fake_tiny_imagenet(
    root: str | os.PathLike,
    num_classes: int = 3,
    per_class: int = 4,
    *,
    val_per_class: int = 2,
    seed: int = 0,
) -> Path:
    """Write a fake ``tiny-imagenet-200/`` layout of 64x64 JPEG images.

    Args:
        root: Parent folder.
        num_classes: Number of wnids.
        per_class: Training images per class.
        val_per_class: Official-val (test) images per class.
        seed: Seed of the pixel generator.

    Returns:
        The created data set folder.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    wnids = _wnids(num_classes)
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    labels = _labels(num_classes, per_class, rng)
    images = _images(labels, 64, 64, rng)
    for number, label in enumerate(labels):
        wnid = wnids[label]
        _save_jpeg(images[number], folder / "train" / wnid / "images" / f"{wnid}_{number}.JPEG")
    labels = _labels(num_classes, val_per_class, rng)
    lines = []
    images = _images(labels, 64, 64, rng)
    for number, label in enumerate(labels):
        _save_jpeg(images[number], folder / "val" / "images" / f"val_{number}.JPEG")
        lines.append(f"val_{number}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def write_fake_imagenet(
    root: str | os.PathLike,
    num_classes: int = 3,
    per_class: int = 4,
    *,
    val_per_class: int = 2,
    image_size: tuple[int, int] = (96, 80),
    seed: int = 0,
) -> Path:
    """Write a fake ``imagenet/{train,val}/<wnid>/*.JPEG`` class-folder layout.

    Args:
        root: Parent folder.
        num_classes: Number of class folders.
        per_class: Training images per class.
        val_per_class: Official-val (test) images per class.
        image_size: ``(width, height)`` of the written images (not square, like real ones).
        seed: Seed of the pixel generator.

    Returns:
        The created data set folder.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "imagenet"
    wnids = _wnids(num_classes)
    width, height = image_size
    for split, count in (("train", per_class), ("val", val_per_class)):
        labels = _labels(num_classes, count, rng)
        images = _images(labels, height, width, rng)
        for number, label in enumerate(labels):
            _save_jpeg(images[number], folder / split / wnids[label] / f"{split}_{number}.JPEG")
    return folder
