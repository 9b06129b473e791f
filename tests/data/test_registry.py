"""The dataset registry: the shipped MNIST, Fashion-MNIST, where files are looked for, checksums."""

from __future__ import annotations

import dataclasses
import gzip
import shutil
from pathlib import Path

import pytest
import torch

from dgm.data import REGISTRY, Dataset, available_datasets, load_dataset, read_idx, write_idx
from dgm.errors import DataError, UsageError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist")


def _assert_shapes(d: Dataset, name: str) -> None:
    assert d.name == name
    assert d.train_images.shape == (60000, 28, 28) and d.train_images.dtype == torch.uint8
    assert d.test_images.shape == (10000, 28, 28) and d.test_images.dtype == torch.uint8
    assert d.train_labels.shape == (60000,) and d.train_labels.dtype == torch.int64
    assert d.test_labels.shape == (10000,) and d.test_labels.dtype == torch.int64
    assert d.image_shape == (28, 28)


def test_embedded_mnist(mnist: Dataset) -> None:
    _assert_shapes(mnist, "mnist")
    assert torch.bincount(mnist.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.test_labels).tolist() == MNIST_TEST_COUNTS
    assert int(mnist.train_images.max()) == 255 and int(mnist.train_images.min()) == 0


def test_the_shipped_files_are_the_package_data(mnist_dir: Path) -> None:
    names = sorted(p.name for p in mnist_dir.glob("*.gz"))
    assert names == sorted(f.name for f in REGISTRY["mnist"].files().values())


def test_available_datasets() -> None:
    assert available_datasets() == ["fashion-mnist", "mnist"]


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="'cifar'.*fashion-mnist, mnist"):
        load_dataset("cifar")


def test_plain_files_load_like_gzipped_ones(tmp_path: Path, mnist_dir: Path, mnist: Dataset):
    for f in REGISTRY["mnist"].files().values():
        plain = f.name.removesuffix(".gz")
        (tmp_path / plain).write_bytes(gzip.decompress((mnist_dir / f.name).read_bytes()))
    d = load_dataset("mnist", data_dir=tmp_path)
    assert torch.equal(d.test_images, mnist.test_images)
    assert torch.equal(d.train_labels, mnist.train_labels)


def _tamper_labels(directory: Path) -> Path:
    """Rewrite t10k labels as a valid gzipped IDX file whose first label differs."""
    path = directory / "t10k-labels-idx1-ubyte.gz"
    y = read_idx(path)
    y[0] = (y[0] + 1) % 10
    write_idx(path, y, gzip=True)
    return path


def test_changed_file_fails_its_checksum(mnist_copy: Path) -> None:
    path = _tamper_labels(mnist_copy)
    expected = REGISTRY["mnist"].test_labels.sha256
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=mnist_copy)
    message = str(info.value)
    assert str(path) in message and expected in message and "checksum" in message
    assert "\n" not in message
    # the check is what caught it: unverified, the same files load
    d = load_dataset("mnist", data_dir=mnist_copy, verify=False)
    assert d.test_labels.shape == (10000,)


def test_missing_file_lists_where_it_looked(mnist_copy: Path) -> None:
    (mnist_copy / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=mnist_copy)
    message = str(info.value)
    assert str(mnist_copy) in message and "train-labels-idx1-ubyte.gz" in message
    assert "t10k-images" not in message  # only what is missing is named
    assert "--download" in message and "\n" not in message


def test_data_dir_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="looked in"):
        load_dataset("mnist", data_dir=tmp_path / "nowhere")


def test_count_mismatch_is_caught_without_checksums(mnist_copy: Path) -> None:
    path = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, read_idx(path)[:-1], gzip=True)
    with pytest.raises(DataError, match="10000 images but .* 9999 labels"):
        load_dataset("mnist", data_dir=mnist_copy, verify=False)


def test_default_search_falls_back_to_the_cache(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = dataclasses.replace(REGISTRY["mnist"], search_dirs=(tmp_path / "empty",))
    monkeypatch.setitem(REGISTRY, "mnist", spec)
    home = tmp_path / "home"
    monkeypatch.setenv("DGM_DATA_HOME", str(home))
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    assert str(tmp_path / "empty") in str(info.value) and str(home / "mnist") in str(info.value)
    shutil.copytree(mnist_dir, home / "mnist")
    assert load_dataset("mnist").test_labels.shape == (10000,)


def _assert_fashion(d: Dataset) -> None:
    _assert_shapes(d, "fashion-mnist")
    assert torch.bincount(d.train_labels).tolist() == [6000] * 10
    assert torch.bincount(d.test_labels).tolist() == [1000] * 10
    assert d.train_labels[:5].tolist() == [9, 0, 0, 3, 0]


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_package() -> None:
    _assert_fashion(load_dataset("fashion-mnist"))


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_a_data_dir(tmp_path: Path, mnist: Dataset) -> None:
    for f in FASHION_DIR.iterdir():
        shutil.copyfile(f, tmp_path / f.name)
    d = load_dataset("fashion-mnist", data_dir=tmp_path)
    _assert_fashion(d)
    assert not torch.equal(d.test_images, mnist.test_images)
