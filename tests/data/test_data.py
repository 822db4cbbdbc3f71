"""Tests of sfpk.data: splits, on-disk layouts, transforms, errors and loaders."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from sfpk.data import (
    DataSplits,
    dataset_spec,
    embedded_datasets,
    list_datasets,
    load_dataset,
    make_loader,
    register_dataset,
)
from sfpk.data.fake import write_fake_cifar, write_fake_imagenet, write_fake_tiny_imagenet
from sfpk.data.transforms import CIFAR100_MEAN, CIFAR100_STD, RandomCrop
from sfpk.errors import ConfigError, DataError, UnknownNameError

ON_DISK = ["cifar10", "cifar100", "tiny_imagenet", "imagenet"]
# name -> (official train size, official test size, num_classes, input shape)
FAKE_SIZES = {
    "cifar10": (10 * 10, 10 * 2, 10, (3, 32, 32)),
    "cifar100": (100 * 3, 100 * 1, 100, (3, 32, 32)),
    "tiny_imagenet": (3 * 4, 3 * 2, 3, (3, 64, 64)),
    "imagenet": (3 * 4, 3 * 2, 3, (3, 224, 224)),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("data")
    write_fake_cifar(root, 10, 10, test_per_class=2)
    write_fake_cifar(root, 100, 3, test_per_class=1)
    write_fake_tiny_imagenet(root, 3, 4, val_per_class=2)
    write_fake_imagenet(root, 3, 4, val_per_class=2)
    return root


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SFPK_DATA", raising=False)


def test_list_datasets_is_the_documented_set() -> None:
    """The CLI and config validation rely on exactly these names."""
    assert list_datasets() == [
        "cifar10",
        "cifar100",
        "digits",
        "digits16",
        "imagenet",
        "mnist1d",
        "tiny_imagenet",
        "tinytext",
    ]


def test_unknown_dataset_name_names_choices() -> None:
    """A typo must say what is available, with a close match."""
    with pytest.raises(UnknownNameError, match="cifar100"):
        load_dataset("cifar1000")


@pytest.mark.parametrize("name", list_datasets())
def test_registering_a_taken_dataset_name_raises(name: str) -> None:
    """Two loaders under one name would silently shadow each other; any case is the same name."""
    before = dataset_spec(name)
    with pytest.raises(ConfigError, match="already registered"):

        @register_dataset(name.upper(), input_shape=(1,), on_disk=False)
        def shadow(*, seed: int = 0, val_fraction: float = 0.1, augment: bool = True):
            raise AssertionError("never called")

    assert dataset_spec(name) is before


def test_unknown_dataset_lists_every_choice() -> None:
    """The error carries the whole registry, so the CLI and config can show what exists."""
    with pytest.raises(UnknownNameError) as info:
        dataset_spec("cifar1000")
    assert info.value.choices == sorted([*list_datasets(), "text:<path>"])
    assert all(name in str(info.value) for name in list_datasets())


def test_embedded_datasets_come_from_the_registry() -> None:
    """The data sets needing no data directory are the registry's, not a list kept elsewhere."""
    assert embedded_datasets() == ["digits", "digits16", "mnist1d", "tinytext"]
    assert sorted(set(list_datasets()) - set(embedded_datasets())) == sorted(ON_DISK)


@pytest.mark.parametrize("name", ["digits", "mnist1d", "tinytext"])
def test_registered_input_shape_matches_the_loaded_data(name: str) -> None:
    """The shape the registry states (used before loading, e.g. by `sfpk reference`) is true."""
    assert load_dataset(name).input_shape == dataset_spec(name).input_shape


@pytest.mark.parametrize("name", ON_DISK)
def test_fake_layout_loads_with_shapes_labels_and_sizes(name: str, data_root) -> None:
    """Each on-disk format yields float32 inputs of input_shape and int64 labels in range."""
    splits = load_dataset(name, data_dir=data_root, val_fraction=0.25)
    train_size, test_size, num_classes, shape = FAKE_SIZES[name]
    assert isinstance(splits, DataSplits)
    assert (splits.num_classes, splits.input_shape) == (num_classes, shape)
    assert dataset_spec(name).input_shape == shape
    assert len(splits.train) + len(splits.val) == train_size
    assert len(splits.val) == round(0.25 * train_size)
    assert len(splits.test) == test_size
    for dataset in (splits.train, splits.val, splits.test):
        x, y = dataset[0]
        assert x.dtype == torch.float32 and tuple(x.shape) == shape
        assert y.dtype == torch.int64 and y.dim() == 0 and 0 <= int(y) < num_classes


def test_val_is_carved_from_train_without_overlap(data_root) -> None:
    """Validation must be held-out training images, disjoint from train, covering it all."""
    splits = load_dataset("cifar10", data_dir=data_root, val_fraction=0.2)
    train, val = set(splits.train.indices), set(splits.val.indices)
    assert not train & val
    assert train | val == set(range(100))
    assert splits.train.base is splits.val.base and splits.test.base is not splits.train.base


def test_split_is_deterministic_in_seed(data_root) -> None:
    """The same seed must give the same split (reproducible runs); another seed another one."""
    first = load_dataset("cifar10", data_dir=data_root, seed=3).val.indices
    again = load_dataset("cifar10", data_dir=data_root, seed=3).val.indices
    other = load_dataset("cifar10", data_dir=data_root, seed=4).val.indices
    assert first == again and first != other


def test_test_split_is_the_official_one_normalised(data_root) -> None:
    """Test items are the official test images in order, only normalised."""
    with open(data_root / "cifar-100-python" / "test", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")
    image = torch.from_numpy(raw[b"data"][5].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor(CIFAR100_MEAN).view(3, 1, 1), torch.tensor(CIFAR100_STD).view(3, 1, 1)
    x, y = load_dataset("cifar100", data_dir=data_root).test[5]
    assert torch.allclose(x, (image - mean) / std, atol=1e-6)
    assert int(y) == raw[b"fine_labels"][5]


@pytest.mark.parametrize("name", ["cifar100", "tiny_imagenet", "imagenet"])
def test_augmentation_changes_train_items_but_not_test_or_val(name: str, data_root) -> None:
    """Training must see random crops/flips; evaluation must be deterministic."""
    torch.manual_seed(0)
    splits = load_dataset(name, data_dir=data_root)
    train_draws = [splits.train[0][0] for _ in range(6)]
    assert any(not torch.equal(train_draws[0], x) for x in train_draws[1:])
    for dataset in (splits.test, splits.val):
        assert torch.equal(dataset[0][0], dataset[0][0])
    plain = load_dataset(name, data_dir=data_root, augment=False)
    assert torch.equal(plain.train[0][0], plain.train[0][0])


def test_data_dir_may_be_parent_or_dataset_folder(data_root) -> None:
    """Users point at either the data root or the data set folder; both must work."""
    from_parent = load_dataset("cifar10", data_dir=data_root)
    from_folder = load_dataset("cifar10", data_dir=data_root / "cifar-10-batches-py")
    assert torch.equal(from_parent.test[0][0], from_folder.test[0][0])


def test_data_dir_defaults_to_environment_variable(data_root, monkeypatch) -> None:
    """Data locations come from config or SFPK_DATA, never from the host name."""
    monkeypatch.setenv("SFPK_DATA", str(data_root))
    assert len(load_dataset("cifar100").test) == 100


def test_no_data_dir_error_mentions_env_var_and_no_download() -> None:
    """Without a directory the user must learn how to provide one, and that nothing downloads."""
    with pytest.raises(DataError, match="SFPK_DATA") as info:
        load_dataset("cifar10")
    assert "never downloads" in str(info.value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar10", "data_batch_1"),
        ("cifar100", "cifar-100-python"),
        ("tiny_imagenet", "wnids.txt"),
        ("imagenet", "train"),
    ],
)
def test_missing_files_error_names_expected_files(name: str, expected: str, tmp_path) -> None:
    """A wrong directory must name the files that were expected and where."""
    with pytest.raises(DataError, match=expected) as info:
        load_dataset(name, data_dir=tmp_path)
    assert str(tmp_path) in str(info.value)


def test_malformed_pickle_raises_data_error(tmp_path) -> None:
    """A truncated or foreign batch file must be a clear DataError, not a pickle traceback."""
    folder = write_fake_cifar(tmp_path, 10, 2)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_pickle_with_code_is_refused(tmp_path) -> None:
    """Unpickling must never run code from a tampered data file."""

    class Exploit:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    folder = write_fake_cifar(tmp_path, 100, 1)
    with open(folder / "train", "wb") as handle:
        pickle.dump({b"data": Exploit()}, handle)
    with pytest.raises(DataError, match="not allowed"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_reads_batches_pickled_by_numpy1(tmp_path) -> None:
    """The official files reference numpy.core (numpy 1); they must load under numpy 2 too."""
    folder = write_fake_cifar(tmp_path, 100, 1)
    with open(folder / "train", "rb") as handle:
        expected = pickle.load(handle, encoding="bytes")[b"data"]
    batch = {b"data": expected, b"fine_labels": list(range(100))}
    payload = pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in payload
    (folder / "train").write_bytes(payload)
    x, y = load_dataset("cifar100", data_dir=tmp_path, val_fraction=0.0, augment=False).train[3]
    assert int(y) == 3 and x.shape == (3, 32, 32)


def test_wrong_array_shape_raises_data_error(tmp_path) -> None:
    """A batch whose images are not 3x32x32 must be reported with the file name."""
    folder = write_fake_cifar(tmp_path, 100, 1)
    with open(folder / "test", "wb") as handle:
        pickle.dump({b"data": np.zeros((4, 10), np.uint8), b"fine_labels": [0] * 4}, handle)
    with pytest.raises(DataError, match="3072"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_bad_tiny_imagenet_annotation_raises_data_error(tmp_path) -> None:
    """An annotation naming an unknown class must point at the file and line."""
    folder = write_fake_tiny_imagenet(tmp_path, 2, 1, val_per_class=1)
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="val_annotations.txt:1"):
        load_dataset("tiny_imagenet", data_dir=tmp_path)


def test_mnist1d_splits_shapes_and_determinism() -> None:
    """mnist1d is the demo data set: 4000 train (split) / 1000 test, 40 features, reproducible."""
    splits = load_dataset("mnist1d", val_fraction=0.1)
    assert (splits.num_classes, splits.input_shape) == (10, (40,))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3600, 400, 1000)
    x, y = splits.train[0]
    assert x.dtype == torch.float32 and x.shape == (40,) and y.dtype == torch.int64
    assert torch.equal(load_dataset("mnist1d").test[7][0], splits.test[7][0])
    labels = torch.stack([splits.test[i][1] for i in range(len(splits.test))])
    assert set(labels.tolist()) == set(range(10))


def test_mnist1d_generation_leaves_global_rngs_alone() -> None:
    """mnist1d reseeds numpy/random internally; a user's random stream must not change."""
    from sfpk.data.embedded import _mnist1d_tensors

    _mnist1d_tensors.cache_clear()
    np.random.seed(123)
    random.seed(123)
    load_dataset("mnist1d")
    after = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    assert after == (np.random.rand(), random.random())


def test_digits_splits_shapes_and_scale() -> None:
    """digits: 1797 images 1x8x8 in [0, 1], fixed stratified 20 % test split."""
    splits = load_dataset("digits", val_fraction=0.1)
    assert (splits.num_classes, splits.input_shape) == (10, (1, 8, 8))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert len(splits.test) == 360
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    assert x.shape[1:] == (1, 8, 8) and x.min() >= 0 and x.max() <= 1
    other_seed = load_dataset("digits", seed=5)
    assert torch.equal(other_seed.test.inputs, splits.test.inputs)


def test_val_fraction_out_of_range_is_config_error() -> None:
    """val_fraction outside [0, 1) must be rejected with the bad value."""
    with pytest.raises(ConfigError, match="val_fraction=1.0"):
        load_dataset("digits", val_fraction=1.0)


def test_loader_is_reproducible_in_seed() -> None:
    """Same seed, same batch order; different seed, different order."""
    dataset = load_dataset("digits").train

    def first_labels(seed: int) -> torch.Tensor:
        return next(iter(make_loader(dataset, batch_size=32, shuffle=True, seed=seed)))[1]

    assert torch.equal(first_labels(1), first_labels(1))
    assert not torch.equal(first_labels(1), first_labels(2))


def test_loader_with_workers_gives_reproducible_augmentation(data_root) -> None:
    """Worker RNGs derive from the loader seed, so augmented batches repeat exactly."""
    dataset = load_dataset("cifar10", data_dir=data_root).train

    def first_batch(seed: int) -> torch.Tensor:
        loader = make_loader(dataset, batch_size=16, shuffle=True, seed=seed, num_workers=1)
        return next(iter(loader))[0]

    assert torch.equal(first_batch(7), first_batch(7))


def test_random_crop_pads_with_zeros_and_keeps_size() -> None:
    """Padding must add black borders, and the crop must keep 32x32 with shifted content."""
    torch.manual_seed(0)
    image = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    crops = [RandomCrop(32, padding=4)(image) for _ in range(20)]
    assert all(c.shape == (3, 32, 32) for c in crops)
    assert any((c == 0).any() for c in crops)
    assert all(set(c.unique().tolist()) <= {0, 200} for c in crops)
