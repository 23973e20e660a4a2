"""The standard file formats of the datasets ``trainables.data`` reads from a user's folder: safe readers for CIFAR's
pickles and SVHN's MATLAB files, and the cheap structural checks the driver runs on them before any trial starts.

``data_dir`` is user supplied: the CIFAR unpickler resolves only what those files contain (numpy arrays, bytes), and
the checks walk a pickle's opcodes without building objects. Every problem is a :class:`DatasetError` whose one-line
message names the file.
"""

from __future__ import annotations

import codecs
import functools
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy >= 2 (numpy.core still resolves for old pickles, but only with a deprecation warning)
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.numeric import _frombuffer as _np_frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.numeric import _frombuffer as _np_frombuffer


class DatasetError(Exception):
    """A user-facing dataset problem, always with a single-line message.

    Whitespace (including newlines from wrapped library errors) is collapsed so the message can be shown
    as one line in logs, CLI output and experiment tables.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@functools.lru_cache(maxsize=64)
def _verify_file(path_text: str, name: str, size: int, mtime_ns: int) -> None:
    """Structure of one dataset file, cheaply (``size`` and ``mtime_ns`` key the cache, so a replaced file is
    checked again). CIFAR pickles: the opcode stream is walked without building any object (nothing is executed)
    and must end in STOP at the end of the file, with a pixel payload of whole 3072-byte images. SVHN ``.mat``:
    the variables' headers give X (32, 32, 3, N) and y (N, 1), the file must be large enough to hold N images, and
    the labels (small) must lie in 1..10."""
    path = Path(path_text)
    if name == "svhn":
        _verify_svhn(path, size)
    else:
        _verify_cifar_pickle(path)


def _verify_cifar_pickle(path: Path) -> None:
    import pickletools

    largest, last = 0, None
    try:
        with path.open("rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                last = opcode.name
                if isinstance(arg, (bytes, str)):
                    largest = max(largest, len(arg))
            trailing = f.read(1)
    except Exception as err:  # ValueError from genops: truncated argument, unknown opcode
        raise DatasetError(f"{str(path)!r} is not a readable CIFAR pickle (truncated or corrupt): {err}") from None
    if last != "STOP" or trailing:
        raise DatasetError(f"{str(path)!r} is not a complete CIFAR pickle (no end marker at the end of the file)")
    if largest == 0 or largest % 3072:
        raise DatasetError(f"{str(path)!r} holds no pixel data of whole 32x32x3 images (largest field {largest} "
                           "bytes, a multiple of 3072 expected)")


def _mat_extent(path: Path) -> int:
    """Where the last variable of a MATLAB 5 file ends by its declared sizes: headers only, data skipped (the walk
    of scipy's ``list_variables``, which does not return the positions)."""
    from scipy.io.matlab._mio5 import MatFile5Reader

    end = 0
    with path.open("rb") as f:
        reader = MatFile5Reader(f)
        reader.initialize_read()
        reader.read_file_header()
        size = f.seek(0, 2)
        f.seek(128)  # after the file header
        while f.tell() < size:
            _, end = reader.read_var_header()
            if end > size:
                break
            f.seek(end)
    return end


def _verify_svhn(path: Path, size: int) -> None:
    import scipy.io

    try:
        extent = _mat_extent(path)
        variables = {v[0]: v[1] for v in scipy.io.whosmat(path)}
    except Exception as err:
        raise DatasetError(f"cannot read {str(path)!r} as a MATLAB file: {type(err).__name__}: {err}") from None
    if extent > size:  # the official files store X compressed: the declared extents tell truncation
        raise DatasetError(f"{str(path)!r} is truncated: its variables extend past its {size} bytes")
    x_shape, y_shape = variables.get("X"), variables.get("y")
    if x_shape is None or y_shape is None:
        raise DatasetError(f"{str(path)!r} lacks the 'X' and 'y' variables of SVHN format 2 (cropped digits)")
    if len(x_shape) != 4 or tuple(x_shape[:3]) != (32, 32, 3) or x_shape[3] != y_shape[0]:
        raise DatasetError(f"{str(path)!r}: X must be (32, 32, 3, N) with y (N, 1), got {x_shape} and {y_shape}")
    try:
        y = np.asarray(scipy.io.loadmat(path, variable_names=["y"])["y"]).reshape(-1)
    except Exception as err:
        raise DatasetError(f"cannot read the labels of {str(path)!r}: {type(err).__name__}: {err}") from None
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DatasetError(f"{str(path)!r}: labels must lie in 1..10 (10 meaning digit 0), found {y.min()}..{y.max()}")


# --------------------------------------------------------------------------------------------------
# Reading the standard file formats


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only resolves what CIFAR pickles contain (numpy arrays, bytes).

    ``data_dir`` is user supplied and a plain ``pickle.load`` would execute arbitrary code from it.
    """

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,  # the original (Python 2) files
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,  # protocol 5 re-pickles
        ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a CIFAR pickle)") from None


def _read_pickle(path: Path) -> dict[Any, Any]:
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # corrupt, truncated, wrong format, unreadable: all the user's to fix
        raise DatasetError(f"cannot read {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"cannot read {str(path)!r}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _field(d: dict[Any, Any], key: str, path: Path) -> Any:
    for k in (key.encode(), key):  # original files have bytes keys; tolerate re-pickled str keys
        if k in d:
            return d[k]
    raise DatasetError(f"{str(path)!r} has no {key!r} entry; is it really the file it is named after?")


def _as_uint8(a: Any, path: Path, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.integer) or a.size and (a.min() < 0 or a.max() > 255):
            raise DatasetError(f"{str(path)!r}: {what} must be 8-bit pixel values, got dtype {a.dtype}")
        a = a.astype(np.uint8)
    return a


def _labels(a: Any, n: int, num_classes: int, path: Path, what: str) -> np.ndarray:
    """Validated int64 labels; integral floats (as MATLAB files may hold them) are accepted."""
    y = np.asarray(a).reshape(-1)
    numeric = np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                      and bool(np.all(y == np.round(y))))
    if len(y) != n or (y.size and not numeric):
        raise DatasetError(f"{str(path)!r}: expected {n} integer {what}, got {y.size} of dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(f"{str(path)!r}: {what} must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    return y.astype(np.int64)


def _read_cifar(path: Path, label_keys: Sequence[str], num_classes: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Return (x uint8 (N,3,32,32), *labels) from one CIFAR pickle.

    Rows of ``data`` are 1024 red, then 1024 green, then 1024 blue values, each plane row-major 32x32,
    which is exactly the C-order layout of (3, 32, 32): a reshape, not a transpose.
    """
    d = _read_pickle(path)
    data = _as_uint8(_field(d, "data", path), path, "data")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{str(path)!r}: data must have shape (N, 3072), got {data.shape}")
    x = np.ascontiguousarray(data).reshape(-1, 3, 32, 32)
    labels = [_labels(_field(d, k, path), len(x), c, path, k) for k, c in zip(label_keys, num_classes, strict=True)]
    return (x, *labels)


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN format 2: X is (32, 32, 3, N) = (row, col, channel, sample); y is (N, 1) with 10 meaning 0."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as exc:
        raise DatasetError(f"cannot read {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if "X" not in mat or "y" not in mat:
        raise DatasetError(f"{str(path)!r} lacks the 'X' and 'y' variables of SVHN format 2 (cropped digits)")
    x = _as_uint8(mat["X"], path, "X")
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DatasetError(f"{str(path)!r}: X must have shape (32, 32, 3, N), got {x.shape}")
    x = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    y = np.asarray(mat["y"]).reshape(-1)
    if np.issubdtype(y.dtype, np.number):
        y = np.where(y == 10, 0, y)  # SVHN labels digit 0 as 10
    return x, _labels(y, len(x), 10, path, "labels (1..10)")
