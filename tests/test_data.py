"""Tests for trainables.data: real file formats written in tmp_path, splits, the batch loader, augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from trainables.batching import BatchLoader, augment_batch
from trainables.data import (
    DATASETS,
    NEEDS_DATA_DIR,
    DatasetError,
    Split,
    check_dataset,
    load_dataset,
)

# --------------------------------------------------------------------------------------------------
# Writers for tiny files in the real formats. Every image carries a unique id in its first two bytes
# (red channel, pixels (0, 0) and (0, 1)), so tests can trace images through loading and splitting.


def _images(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 3072) uint8 rows in CIFAR layout, random content, id encoded in bytes 0 and 1."""
    data = rng.integers(0, 256, size=(len(ids), 3072), dtype=np.uint8)
    data[:, 0] = ids // 256
    data[:, 1] = ids % 256
    return data


def _ids(x: torch.Tensor) -> np.ndarray:
    """Inverse of the id encoding for loaded (N, 3, 32, 32) images."""
    a = x[:, 0, 0, :2].numpy().astype(np.int64)
    return a[:, 0] * 256 + a[:, 1]


def _dump(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)  # the original files are Python 2 cPickle, protocol 2


def write_cifar10(folder: Path, per_class_per_batch: int = 2, test_per_class: int = 2, seed: int = 0) -> dict:
    """Five data batches and a test batch; returns {id: (row, label)} for all train images and test ids."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: dict[int, tuple[np.ndarray, int]] = {}
    next_id = 0
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n_per = test_per_class if name == "test_batch" else per_class_per_batch
        labels = np.repeat(np.arange(10), n_per)
        rng.shuffle(labels)
        ids = np.arange(next_id, next_id + len(labels))
        next_id += len(labels)
        data = _images(ids, rng)
        _dump(folder / name, {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                              b"filenames": [f"{i}.png".encode() for i in ids]})
        rows.update({int(i): (row, int(lab)) for i, row, lab in zip(ids, data, labels, strict=True)})
    return rows


def write_cifar100(folder: Path, train_per_class: int = 3, test_per_class: int = 1, seed: int = 0) -> dict:
    """train/test pickles; coarse label = fine // 5. Returns {id: fine label}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fine_of: dict[int, int] = {}
    next_id = 0
    for name, n_per in (("train", train_per_class), ("test", test_per_class)):
        fine = np.repeat(np.arange(100), n_per)
        rng.shuffle(fine)
        ids = np.arange(next_id, next_id + len(fine))
        next_id += len(fine)
        _dump(folder / name, {b"filenames": [b"x.png"] * len(ids), b"batch_label": name.encode(),
                              b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(),
                              b"data": _images(ids, rng)})
        fine_of.update({int(i): int(f) for i, f in zip(ids, fine, strict=True)})
    return fine_of


def write_svhn(folder: Path, train_per_class: int = 6, test_per_class: int = 2, seed: int = 0) -> dict:
    """train/test .mat files with X (32, 32, 3, N) uint8 and y (N, 1) in 1..10. Returns {name: (X, y)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name, n_per in (("train_32x32.mat", train_per_class), ("test_32x32.mat", test_per_class)):
        y = np.repeat(np.arange(1, 11), n_per).astype(np.uint8)
        rng.shuffle(y)
        X = rng.integers(0, 256, size=(32, 32, 3, len(y)), dtype=np.uint8)
        scipy.io.savemat(folder / name, {"X": X, "y": y[:, None]})
        written[name] = (X, y)
    return written


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cifar10")
    rows = write_cifar10(root / "cifar-10-batches-py")
    return root, rows


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist5k")


# --------------------------------------------------------------------------------------------------
# Embedded datasets


def test_mnist5k_loads_5000_real_digits_with_default_split(mnist5k) -> None:
    b = mnist5k
    assert (len(b.train), len(b.val), len(b.test)) == (3500, 500, 1000)
    assert b.num_classes == 10 and b.input_shape == (1, 28, 28) and b.augment == "none"
    for split, per_class in ((b.train, 350), (b.val, 50), (b.test, 100)):
        assert split.x.dtype == torch.uint8 and split.x.shape[1:] == (1, 28, 28)
        assert split.y.dtype == torch.int64
        assert torch.bincount(split.y, minlength=10).tolist() == [per_class] * 10  # stratified exactly
    # Real MNIST statistics: mostly black background (mean ~0.13, std ~0.31), black borders.
    assert 0.10 < b.mean[0] < 0.16 and 0.28 < b.std[0] < 0.34
    assert b.train.x[:, :, 0, :].float().mean() < 1.0
    assert int(b.train.x.max()) == 255


def test_embedded_test_set_is_fixed_and_val_follows_seed(mnist5k) -> None:
    other = load_dataset("mnist5k", split_seed=1)
    assert torch.equal(other.test.x, mnist5k.test.x)
    assert not torch.equal(other.val.x, mnist5k.val.x)
    # the same seed reproduces the split exactly
    again = load_dataset("mnist5k", split_seed=0)
    assert torch.equal(again.val.x, mnist5k.val.x) and torch.equal(again.train.y, mnist5k.train.y)


def test_digits_shapes_scale_and_split() -> None:
    b = load_dataset("digits")
    assert b.input_shape == (1, 8, 8) and b.num_classes == 10
    assert len(b.train) + len(b.val) + len(b.test) == 1797
    assert len(b.test) == 360 and len(b.val) == 180  # 20% and 10%
    assert int(b.train.x.max()) == 255 and int(b.train.x.min()) == 0  # 0..16 rescaled to 0..255


def test_val_size_variants_and_rejections() -> None:
    assert len(load_dataset("digits", val_size=100).val) == 100
    b = load_dataset("digits", val_size=0.25)
    assert len(b.val) == int(np.ceil(0.25 * (1797 - 360)))  # a fraction of the non-test pool
    for bad in (0, -3, 1.0, 0.0, 5000, "10", True):
        with pytest.raises(DatasetError, match="val_size"):
            load_dataset("digits", val_size=bad)


def test_bad_arguments_are_dataset_errors() -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet")
    assert all(name in str(err.value) for name in DATASETS)
    with pytest.raises(DatasetError, match="augment"):
        load_dataset("digits", augment="mixup")
    with pytest.raises(DatasetError, match="split_seed"):
        load_dataset("digits", split_seed=-1)
    assert load_dataset("digits", augment="crop").augment == "crop"


# --------------------------------------------------------------------------------------------------
# CIFAR-10


def test_cifar10_shapes_layout_and_stratified_split(cifar10_dir) -> None:
    root, rows = cifar10_dir
    b = load_dataset("cifar10", data_dir=str(root), val_size=20)
    assert b.augment == "crop_flip" and b.num_classes == 10 and b.input_shape == (3, 32, 32)
    assert (len(b.train), len(b.val), len(b.test)) == (80, 20, 20)
    assert torch.bincount(b.val.y, minlength=10).tolist() == [2] * 10
    assert torch.bincount(b.train.y, minlength=10).tolist() == [8] * 10
    # Each loaded image is byte-for-byte its file row reshaped (3, 32, 32), with its own label.
    for split in (b.train, b.val):
        for img, label, i in zip(split.x, split.y, _ids(split.x), strict=True):
            row, expected = rows[int(i)]
            assert np.array_equal(img.numpy().reshape(-1), row) and int(label) == expected
    train_ids, val_ids, test_ids = (set(_ids(s.x)) for s in (b.train, b.val, b.test))
    assert not (train_ids & val_ids) and not (train_ids & test_ids) and not (val_ids & test_ids)
    assert train_ids | val_ids == set(rows) - test_ids
    # mean/std are the train split's per-channel statistics on the [0, 1] scale
    x = b.train.x.double() / 255
    assert np.allclose(b.mean, x.mean(dim=(0, 2, 3)).numpy()) and np.allclose(b.std, x.std(dim=(0, 2, 3),
                                                                                          correction=0).numpy())


def test_cifar_channel_layout_red_pixel(tmp_path: Path) -> None:
    """A pure red pixel at (row 2, col 5) must land in channel 0 at [2, 5], not anywhere else."""
    write_cifar10(tmp_path)
    data = np.zeros((20, 3072), dtype=np.uint8)
    data[:, 2 * 32 + 5] = 255  # red plane comes first, row-major
    data[:, 1024 + 7] = 9  # green plane, row 0, col 7
    _dump(tmp_path / "test_batch", {b"labels": [0] * 20, b"data": data})
    test = load_dataset("cifar10", data_dir=str(tmp_path), val_size=10).test
    expected = torch.zeros(3, 32, 32, dtype=torch.uint8)
    expected[0, 2, 5] = 255
    expected[1, 0, 7] = 9
    assert all(torch.equal(img, expected) for img in test.x)


def test_cifar10_splits_reproducible_and_seed_dependent(cifar10_dir) -> None:
    root, _ = cifar10_dir
    a = load_dataset("cifar10", data_dir=str(root), val_size=20, split_seed=3)
    b = load_dataset("cifar10", data_dir=str(root), val_size=20, split_seed=3)
    c = load_dataset("cifar10", data_dir=str(root), val_size=20, split_seed=4)
    assert np.array_equal(_ids(a.val.x), _ids(b.val.x)) and np.array_equal(_ids(a.train.x), _ids(b.train.x))
    assert set(_ids(a.val.x)) != set(_ids(c.val.x))
    assert torch.equal(a.test.x, c.test.x)  # the official test set never moves


def test_cifar10_files_directly_in_data_dir(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    check_dataset("cifar10", str(tmp_path))
    assert len(load_dataset("cifar10", data_dir=str(tmp_path), val_size=0.2).val) == 20


def test_cifar10_default_val_too_large_for_tiny_data(cifar10_dir) -> None:
    with pytest.raises(DatasetError, match="5000"):
        load_dataset("cifar10", data_dir=str(cifar10_dir[0]))


# --------------------------------------------------------------------------------------------------
# CIFAR-100


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    fine_of = write_cifar100(tmp_path / "cifar-100-python")
    fine = load_dataset("cifar100", data_dir=str(tmp_path), val_size=100)
    coarse = load_dataset("cifar100", data_dir=str(tmp_path), val_size=100, cifar100_labels="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert (len(fine.train), len(fine.val), len(fine.test)) == (200, 100, 100)
    for split_name in ("train", "val", "test"):
        f, c = getattr(fine, split_name), getattr(coarse, split_name)
        ids = _ids(f.x)
        assert np.array_equal(ids, _ids(c.x))  # same images whichever label set is chosen
        assert f.y.tolist() == [fine_of[int(i)] for i in ids]
        assert c.y.tolist() == [fine_of[int(i)] // 5 for i in ids]
    assert int(coarse.train.y.max()) == 19 and int(fine.train.y.max()) == 99
    with pytest.raises(DatasetError, match="coarse"):
        load_dataset("cifar100", data_dir=str(tmp_path), val_size=100, cifar100_labels="medium")


# --------------------------------------------------------------------------------------------------
# SVHN


def test_svhn_transposition_and_label_ten_is_zero(tmp_path: Path) -> None:
    written = write_svhn(tmp_path)
    (tmp_path / "extra_32x32.mat").write_bytes(b"ignored, even though it is not a valid .mat file")
    b = load_dataset("svhn", data_dir=str(tmp_path), val_size=10)
    assert b.augment == "none" and b.num_classes == 10 and b.input_shape == (3, 32, 32)
    X, y = written["test_32x32.mat"]
    # the test split keeps file order: sample n is X[:, :, :, n] as (C, H, W)
    assert torch.equal(b.test.x, torch.from_numpy(X.transpose(3, 2, 0, 1).copy()))
    assert b.test.x[3, 1, 4, 7] == X[4, 7, 1, 3]  # channel 1, row 4, col 7 of sample 3
    assert b.test.y.tolist() == [0 if v == 10 else int(v) for v in y]
    assert 0 in b.test.y.tolist() and int(b.test.y.max()) == 9
    assert (len(b.train), len(b.val)) == (50, 10)
    assert torch.bincount(b.val.y, minlength=10).tolist() == [1] * 10


# --------------------------------------------------------------------------------------------------
# Errors a user can cause


def test_check_dataset_names_and_dirs(tmp_path: Path) -> None:
    assert NEEDS_DATA_DIR == {"cifar10", "cifar100", "svhn"}
    check_dataset("mnist5k", None)
    check_dataset("digits", "/does/not/matter")
    with pytest.raises(DatasetError) as err:
        check_dataset("cifar10", None)
    assert "data_dir" in str(err.value) and "test_batch" in str(err.value)
    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset("svhn", str(tmp_path / "nope"))
    with pytest.raises(DatasetError) as err:
        check_dataset("mnist", None)
    assert "mnist5k" in str(err.value)


def test_missing_files_are_named_with_expected_layout(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        check_dataset("cifar10", str(tmp_path))
    msg = str(err.value)
    assert "missing file(s) test_batch" in msg and "data_batch_1" not in msg.split("expected")[0]
    assert "cifar-10-batches-py" in msg and "found cifar-10-python.tar.gz there: extract it" in msg
    assert "\n" not in msg
    with pytest.raises(DatasetError, match="test_32x32.mat"):
        check_dataset("svhn", str(tmp_path))
    with pytest.raises(DatasetError, match=r"train and test .*cifar-100-python"):
        load_dataset("cifar100", data_dir=str(tmp_path))


def test_corrupt_files_name_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DatasetError, match="data_batch_2") as err:
        load_dataset("cifar10", data_dir=str(tmp_path), val_size=10)
    assert "\n" not in str(err.value)
    _dump(tmp_path / "data_batch_2", {b"labels": [0], b"pixels": np.zeros((1, 3072), np.uint8)})
    with pytest.raises(DatasetError, match="data_batch_2.*'data'"):
        load_dataset("cifar10", data_dir=str(tmp_path), val_size=10)
    write_svhn(tmp_path)
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="train_32x32.mat"):
        load_dataset("svhn", data_dir=str(tmp_path), val_size=10)


def test_pickles_cannot_run_code(tmp_path: Path) -> None:
    """A malicious data_batch must not execute anything (data_dir is user supplied)."""
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    _dump(tmp_path / "data_batch_1", {b"data": Evil(), b"labels": []})
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_dataset("cifar10", data_dir=str(tmp_path), val_size=10)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# BatchLoader


def test_batch_loader_normalizes_train_set(mnist5k) -> None:
    b = mnist5k
    loader = BatchLoader(b.train, batch_size=512, mean=b.mean, std=b.std, shuffle=True)
    batches = list(loader)
    assert len(batches) == len(loader) == 7
    x = torch.cat([xb for xb, _ in batches])
    y = torch.cat([yb for _, yb in batches])
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (3500, 1, 28, 28)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3
    assert sorted(y.tolist()) == sorted(b.train.y.tolist())
    # the formula itself, on the first sample in sampler order
    first = next(iter(loader.sampler))
    expected = (b.train.x[first].float() / 255 - b.mean[0]) / b.std[0]
    assert torch.allclose(batches[0][0][0], expected, atol=1e-5)


def _id_split(n: int) -> Split:
    """Images whose label is their index, to trace samples through the loader."""
    return Split(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n))


@pytest.mark.parametrize(("n", "drop_last"), [(100, False), (101, False), (101, True)])
def test_two_ranks_get_disjoint_shards_and_equal_batch_counts(n: int, drop_last: bool) -> None:
    split = _id_split(n)
    seen = []
    for rank in (0, 1):
        loader = BatchLoader(split, batch_size=8, mean=[0.5], std=[0.25], shuffle=True, seed=7, rank=rank,
                             world_size=2, drop_last=drop_last)
        loader.set_epoch(3)
        ys = [yb for _, yb in loader]
        assert len(ys) == len(loader)
        seen.append(torch.cat(ys).tolist())
    assert len(loader) == (6 if drop_last else 7)  # ceil(n / 2) = 50 or 51 samples per rank, 8 per batch
    assert len(seen[0]) == len(seen[1])
    if not drop_last:
        assert set(seen[0]) | set(seen[1]) == set(range(n))
        overlap = set(seen[0]) & set(seen[1])
        assert len(overlap) == (0 if n % 2 == 0 else 1)  # odd n: the sampler repeats one sample


def test_set_epoch_changes_order_deterministically() -> None:
    split = _id_split(64)

    def order(epoch: int, seed: int = 0) -> list[int]:
        loader = BatchLoader(split, batch_size=10, mean=[0.0], std=[1.0], shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([y for _, y in loader]).tolist()

    assert order(0) == order(0) and order(1) == order(1)
    assert order(0) != order(1) and order(0) != order(0, seed=1)
    assert sorted(order(1)) == list(range(64))
    plain = BatchLoader(split, batch_size=10, mean=[0.0], std=[1.0])
    assert torch.cat([y for _, y in plain]).tolist() == list(range(64))


def test_loader_augmentation_is_reproducible_per_epoch(cifar10_dir) -> None:
    b = load_dataset("cifar10", data_dir=str(cifar10_dir[0]), val_size=20)
    loader = BatchLoader(b.train, batch_size=16, mean=b.mean, std=b.std, augment=b.augment, shuffle=True)

    def epoch_x(epoch: int) -> torch.Tensor:
        loader.set_epoch(epoch)
        return torch.cat([x for x, _ in loader])

    first = epoch_x(2)
    assert torch.equal(first, epoch_x(2))
    plain = BatchLoader(b.train, batch_size=16, mean=b.mean, std=b.std, shuffle=True)
    plain.set_epoch(2)
    assert not torch.equal(first, torch.cat([x for x, _ in plain]))  # augmentation did change the images
    # without shuffling the order is fixed, yet each epoch draws fresh crops and flips
    fixed = BatchLoader(b.train, batch_size=16, mean=b.mean, std=b.std, augment="crop_flip")
    fixed.set_epoch(0)
    e0 = [(x, y) for x, y in fixed]
    fixed.set_epoch(1)
    e1 = [(x, y) for x, y in fixed]
    assert all(torch.equal(y0, y1) for (_, y0), (_, y1) in zip(e0, e1, strict=True))
    assert not torch.equal(torch.cat([x for x, _ in e0]), torch.cat([x for x, _ in e1]))


# --------------------------------------------------------------------------------------------------
# augment_batch


def _known_batch(b: int = 64, c: int = 3, h: int = 10, w: int = 12) -> torch.Tensor:
    """Strictly positive, all-distinct pixel values: any shifted copy is identifiable and unique."""
    return torch.arange(1, b * c * h * w + 1, dtype=torch.float32).reshape(b, c, h, w)


def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``img`` translated by (dy, dx) with zero fill: out[i, j] = img[i - dy, j - dx]."""
    _, h, w = img.shape
    out = torch.zeros_like(img)
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _find_shift(out: torch.Tensor, img: torch.Tensor, pad: int) -> tuple[int, int] | None:
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            if torch.equal(out, _shift(img, dy, dx)):
                return dy, dx
    return None


def test_crop_is_a_zero_filled_translation_of_at_most_pad_pixels() -> None:
    x = _known_batch(b=150)
    out = augment_batch(x, "crop", torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    shifts = [_find_shift(o, i, 4) for o, i in zip(out, x, strict=True)]
    assert all(s is not None for s in shifts)
    assert len(set(shifts)) > 30  # independent offsets per sample, not one for the whole batch
    # every shift in [-4, 4] occurs on both axes (uniform over 9 values, 150 samples)
    assert {s[0] for s in shifts} == {s[1] for s in shifts} == set(range(-4, 5))
    assert torch.equal(out, augment_batch(x, "crop", torch.Generator().manual_seed(0)))  # generator decides


def test_crop_flip_flips_about_half() -> None:
    x = _known_batch(b=2000, c=1, h=4, w=5)
    flipped_only = augment_batch(x, "crop_flip", torch.Generator().manual_seed(1), pad=0)
    is_flip = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(flipped_only, x, strict=True)])
    is_same = torch.tensor([torch.equal(o, i) for o, i in zip(flipped_only, x, strict=True)])
    assert bool((is_flip ^ is_same).all())
    assert 0.45 < float(is_flip.float().mean()) < 0.55
    # with the crop: every output is a translation of the image or of its mirror image
    small = _known_batch(b=32)
    out = augment_batch(small, "crop_flip", torch.Generator().manual_seed(2))
    for o, i in zip(out, small, strict=True):
        assert _find_shift(o, i, 4) is not None or _find_shift(o, i.flip(-1), 4) is not None


def test_none_is_identity_and_unknown_mode_rejected() -> None:
    x = _known_batch(b=4)
    assert augment_batch(x, "none", torch.Generator()) is x
    with pytest.raises(ValueError, match="cutout"):
        augment_batch(x, "cutout", torch.Generator())


def test_truncated_or_wrong_files_are_rejected_before_any_trial(tmp_path: Path) -> None:
    """check_dataset (what the driver runs before Ray starts) reads enough of every file to reject a truncated or
    mislabelled one with a line naming it, without loading the images."""
    write_cifar10(tmp_path / "c10")
    check_dataset("cifar10", str(tmp_path / "c10"))  # intact files pass
    batch = tmp_path / "c10" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[: batch.stat().st_size // 2])
    with pytest.raises(DatasetError, match="data_batch_3.*truncated or corrupt") as err:
        check_dataset("cifar10", str(tmp_path / "c10"))
    assert "\n" not in str(err.value)

    write_cifar100(tmp_path / "c100")
    _dump(tmp_path / "c100" / "test", {b"fine_labels": [0], b"coarse_labels": [0], b"data": b"\x00" * 3000})
    with pytest.raises(DatasetError, match="test.*multiple of 3072"):
        check_dataset("cifar100", str(tmp_path / "c100"))

    write_svhn(tmp_path / "svhn")
    check_dataset("svhn", str(tmp_path / "svhn"))
    train = tmp_path / "svhn" / "train_32x32.mat"
    train.write_bytes(train.read_bytes()[:-500])
    with pytest.raises(DatasetError, match="train_32x32.mat.*truncated"):
        check_dataset("svhn", str(tmp_path / "svhn"))
    write_svhn(tmp_path / "svhn")
    import scipy.io

    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8),
                                                             "y": np.array([[3], [11]])})
    with pytest.raises(DatasetError, match="test_32x32.mat.*1..10"):
        check_dataset("svhn", str(tmp_path / "svhn"))


def test_subset_is_a_fixed_random_draw_with_every_class_not_the_sorted_head() -> None:
    from trainables.data import load_dataset

    test = load_dataset("mnist5k").test
    assert test.y[:100].unique().tolist() == [0]  # why a head will not do: splits are stored sorted by class
    a, b = test.subset(100), test.subset(100)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and len(a) == 100
    assert len(a.y.unique()) == 10
    assert not torch.equal(test.subset(100, seed=1).y, a.y)
    assert test.subset(0) is test and test.subset(len(test)) is test
