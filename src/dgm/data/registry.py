"""The image datasets dgm knows by name, where their files are looked for, and how they load.

Each dataset is four IDX files (train/test images and labels), accepted gzipped (``NAME.gz``) or
plain (``NAME``), and checked against the SHA-256 of their *decompressed* content, so a
recompressed copy (Debian's, say) verifies as well as the publisher's archive.

Search order without ``data_dir``: the spec's own directories (MNIST ships inside the package),
then the download cache ``$DGM_DATA_HOME/<name>`` (default ``~/.cache/dgm/<name>``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dgm.data.download import check_url, download_file
from dgm.data.idx import read_idx
from dgm.errors import DataError, UsageError

__all__ = [
    "REGISTRY",
    "Dataset",
    "DatasetSpec",
    "IdxFile",
    "available_datasets",
    "data_home",
    "load_dataset",
]

_SPLITS = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class IdxFile:
    """One file of a dataset: its canonical (gzipped) name and the SHA-256 of its content."""

    name: str  # e.g. "train-images-idx3-ubyte.gz"
    sha256: str  # of the decompressed bytes

    @property
    def candidates(self) -> tuple[str, str]:
        """The names accepted in a directory: ``NAME.gz`` first, then the plain ``NAME``."""
        return self.name, self.name.removesuffix(".gz")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to find, fetch and verify one dataset."""

    name: str
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile
    urls: tuple[str, ...]  # download bases, tried in order; a file is fetched as base + name
    search_dirs: tuple[Path, ...]  # looked in before the download cache
    how_to_get: str  # shown when the files are missing
    image_shape: tuple[int, int] = (28, 28)
    num_classes: int = 10

    def files(self) -> dict[str, IdxFile]:
        """The four files by split: train_images, train_labels, test_images, test_labels."""
        return {split: getattr(self, split) for split in _SPLITS}


@dataclass
class Dataset:
    """An image dataset in memory: uint8 images ``(N, H, W)`` and int64 labels ``(N,)``."""

    name: str
    train_images: torch.Tensor  # (N_train, H, W) uint8
    train_labels: torch.Tensor  # (N_train,) int64
    test_images: torch.Tensor  # (N_test, H, W) uint8
    test_labels: torch.Tensor  # (N_test,) int64

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)``, e.g. ``(28, 28)``."""
        h, w = self.train_images.shape[1:]
        return int(h), int(w)


def _mnist_like(name: str, sha256: tuple[str, str, str, str], **kwargs: object) -> DatasetSpec:
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    files = {s: IdxFile(n, h) for s, n, h in zip(_SPLITS, names, sha256, strict=True)}
    return DatasetSpec(name=name, **files, **kwargs)  # type: ignore[arg-type]


REGISTRY: dict[str, DatasetSpec] = {
    # LeCun, Cortes and Burges, "The MNIST database of handwritten digits" (1998).
    "mnist": _mnist_like(
        "mnist",
        (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
        urls=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's mirror
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        search_dirs=(Path(__file__).resolve().parent / "mnist",),  # shipped with dgm
        how_to_get="leave the data directory unset to use the copy shipped with dgm, "
        "or pass --download",
    ),
    # Xiao, Rasul and Vollgraf, "Fashion-MNIST" (2017), arXiv:1708.07747. The publisher's own
    # link (fashion-mnist.s3-website.eu-central-1.amazonaws.com) is http only; these serve the
    # same files over https.
    "fashion-mnist": _mnist_like(
        "fashion-mnist",
        (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
        urls=(
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",  # Keras' mirror
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        search_dirs=(Path("/usr/share/datasets/fashion-mnist"),),  # Debian: dataset-fashion-mnist
        how_to_get="run `apt-get install dataset-fashion-mnist`, pass --download",
    ),
}


def available_datasets() -> list[str]:
    """The names ``load_dataset`` accepts, sorted."""
    return sorted(REGISTRY)


def data_home() -> Path:
    """Root of the download cache: ``$DGM_DATA_HOME``, else ``~/.cache/dgm``."""
    env = os.environ.get("DGM_DATA_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dgm"


def _spec(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise UsageError(
            f"unknown dataset {name!r}: expected one of {', '.join(available_datasets())}"
        )
    return REGISTRY[name]


def _find(directory: Path, spec: DatasetSpec) -> dict[str, Path | None]:
    """Which of the spec's files ``directory`` holds (``None`` where it holds neither name)."""
    found: dict[str, Path | None] = {}
    for split, f in spec.files().items():
        paths = [directory / c for c in f.candidates]
        found[split] = next((p for p in paths if p.is_file()), None)
    return found


def _missing_error(
    spec: DatasetSpec, looked: list[tuple[Path, dict[str, Path | None]]]
) -> DataError:
    def missing(found: dict[str, Path | None]) -> str:
        names = [getattr(spec, s).name for s, p in found.items() if p is None]
        return "all four files" if len(names) == len(found) else ", ".join(names)

    where = "; ".join(f"{d} (missing {missing(found)})" for d, found in looked)
    target = looked[0][0] if len(looked) == 1 else data_home() / spec.name
    return DataError(
        f"dataset {spec.name!r} not found; looked in: {where}. To get it: {spec.how_to_get}, "
        f"or put the four files (gzipped or not) in {target}"
    )


def _download(
    spec: DatasetSpec, target: Path, split: str, bases: list[str], verify: bool, progress: bool
) -> Path:
    f: IdxFile = getattr(spec, split)
    errors = []
    for base in bases:
        url = base.rstrip("/") + "/" + f.name
        try:
            return download_file(url, target / f.name, f.sha256 if verify else None, progress)
        except DataError as e:
            errors.append(str(e))
    raise DataError(" | ".join(errors))


def _check(spec: DatasetSpec, arrays: dict[str, np.ndarray], paths: dict[str, Path]) -> None:
    """Structure checks that hold whether or not checksums were verified."""
    for part in ("train", "test"):
        x, y = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        px, py = paths[f"{part}_images"], paths[f"{part}_labels"]
        if x.dtype != np.uint8 or x.ndim != 3 or tuple(x.shape[1:]) != spec.image_shape:
            raise DataError(
                f"bad image file {px}: got {x.dtype} of shape {x.shape}, "
                f"expected uint8 of shape (N, {spec.image_shape[0]}, {spec.image_shape[1]})"
            )
        if y.dtype != np.uint8 or y.ndim != 1:
            raise DataError(
                f"bad label file {py}: got {y.dtype} of shape {y.shape}, "
                "expected uint8 of shape (N,)"
            )
        if len(x) != len(y):
            raise DataError(f"{px} holds {len(x)} images but {py} holds {len(y)} labels")
        if len(y) and int(y.max()) >= spec.num_classes:
            raise DataError(
                f"bad label file {py}: label {int(y.max())} is not in 0..{spec.num_classes - 1}"
            )


def load_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    base_url: str | None = None,
    verify: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load a registered dataset into memory, verifying every file.

    ``data_dir``: look only there (and download there); otherwise the spec's directories, then
    the cache ``data_home() / name``. ``download``: fetch missing files from ``base_url`` (or the
    spec's mirrors). ``verify``: compare the SHA-256 of each decompressed file with the spec's.
    Raises ``UsageError`` for an unknown name or a refused URL, ``DataError`` for missing or bad
    files.
    """
    spec = _spec(name)
    if base_url is not None:
        check_url(base_url)
    cache = Path(data_dir) if data_dir is not None else data_home() / spec.name
    dirs = [cache] if data_dir is not None else [*spec.search_dirs, cache]

    looked = [(d, _find(d, spec)) for d in dirs]
    complete = [found for _, found in looked if None not in found.values()]
    if complete:
        found = complete[0]
    elif download:
        found = _find(cache, spec)
        bases = [base_url] if base_url is not None else list(spec.urls)
        for split, path in found.items():
            if path is None:
                found[split] = _download(spec, cache, split, bases, verify, progress)
    else:
        raise _missing_error(spec, looked)

    paths: dict[str, Path] = {s: p for s, p in found.items() if p is not None}
    arrays = {s: read_idx(p, getattr(spec, s).sha256 if verify else None) for s, p in paths.items()}
    _check(spec, arrays, paths)
    tensors = {
        s: torch.from_numpy(a) if s.endswith("images") else torch.from_numpy(a).long()
        for s, a in arrays.items()
    }
    return Dataset(name=spec.name, **tensors)
