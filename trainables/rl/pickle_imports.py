"""What an RLlib module checkpoint's pickles would import, read without running them, and the refusal of anything
else than what RLlib module checkpoints of this project hold.

RLlib saves an RLModule as two pickles (``class_and_ctor_args.pkl``: the module's class, its spaces and config;
``module_state.pkl``: NumPy weights) and reads them back with plain ``pickle``: there is no weights-only mode. A
pickle runs code when it is loaded through the callables it imports (``os.system``, ``builtins.exec``, ...), and a
checkpoint can come from someone else (an MLflow artifact, a shared folder). So before RLlib unpickles a module,
:func:`check_pickle_imports` lists each import of the file from its opcodes (``pickletools``, which builds no object)
and refuses the file unless every import is one of: NumPy's array, dtype and random-generator rebuilders,
``collections.OrderedDict``,
or a class that is an RLlib ``RLModule`` or ``Catalog`` (under ``ray.rllib`` or ``trainables``) or a gymnasium
space. An import whose name the walk cannot read from literals (a computed ``STACK_GLOBAL``, the copyreg extension
registry) is refused too. This is the pickle module's own "restricting globals" idea, applied before the load
because RLlib does the loading; it narrows what a file can do, it does not make a pickle safe (docs/cluster.md,
"Security"). Fickling's and picklescan's deny-lists were not used: they judge any pickle, this project knows exactly
what its checkpoints import, and an allow-list of that is the stricter rule.
"""

from __future__ import annotations

import importlib
import pickletools
import re

from trainables.checkpoint import CheckpointError

# Plain functions and classes a module checkpoint's pickles import (NumPy 2 names and NumPy 1's, for old files).
ALLOWED_IMPORTS = frozenset({
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
    # A seeded gymnasium space pickles its NumPy Generator: these rebuild it from a bit generator's name and state.
    ("numpy.random._pickle", "__generator_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random.bit_generator", "SeedSequence"), ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("numpy.random._pcg64", "PCG64"), ("numpy.random._pcg64", "PCG64DXSM"), ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._philox", "Philox"), ("numpy.random._sfc64", "SFC64"),
})
# Packages whose classes may be imported when they are RLModules, catalogs or spaces (see _is_allowed_class).
CLASS_PACKAGES = ("ray.rllib.", "trainables.", "gymnasium.spaces.")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_GETS = {"BINGET", "LONG_BINGET", "GET"}
_PUTS = {"BINPUT", "LONG_BINPUT", "PUT"}
_NEUTRAL = {"PROTO", "FRAME"}  # change neither the stack nor the memo


def pickle_imports(path: str) -> list[tuple[str, str]]:
    """Every ``(module, name)`` the pickle at ``path`` imports, in order; :class:`CheckpointError` naming the file
    when an import cannot be read from the file's literals, or the file is not a whole pickle. Runs nothing.

    ``STACK_GLOBAL`` takes its module and name from the top two stack items: they are known only when the two
    stack-pushing opcodes just before it pushed strings (directly or from the memo), which is how ``pickle`` writes
    them; anything else (a string pushed earlier and uncovered by ``POP``) is refused rather than guessed."""
    imports: list[tuple[str, str]] = []
    memo: dict[int, str | None] = {}
    tops: list[str | None] = []  # the known values of the top stack items, as far as the last opcodes tell
    try:
        with open(path, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                name = opcode.name
                if name in _STRINGS:
                    value = arg.decode("latin-1") if isinstance(arg, bytes) else arg
                    tops = [*tops, value][-2:]
                elif name in _GETS:
                    tops = [*tops, memo.get(arg)][-2:]
                elif name == "MEMOIZE":
                    memo[len(memo)] = tops[-1] if tops else None
                elif name in _PUTS:
                    memo[arg] = tops[-1] if tops else None
                elif name in _NEUTRAL:
                    pass
                elif name in ("GLOBAL", "INST"):
                    module, _, attribute = arg.partition(" ")
                    imports.append((module, attribute))
                    tops = []
                elif name == "STACK_GLOBAL":
                    if len(tops) < 2 or None in tops:
                        raise CheckpointError(f"refusing checkpoint file {path}: it imports a name that cannot be "
                                              "read without running it (a pickle can run code when it is loaded)")
                    imports.append((tops[0], tops[1]))  # type: ignore[arg-type]
                    tops = []
                elif name.startswith("EXT"):
                    raise CheckpointError(f"refusing checkpoint file {path}: it imports through the copyreg "
                                          "extension registry, which no RLlib checkpoint uses")
                else:
                    tops = []
    except (ValueError, EOFError) as err:  # pickletools: unknown opcode, truncated argument, no STOP
        raise CheckpointError(f"corrupt checkpoint file {path}: not a whole pickle ({err})") from None
    except OSError as err:
        raise CheckpointError(f"corrupt checkpoint: cannot read {path} ({err.strerror or err})") from None
    return imports


def check_pickle_imports(path: str) -> None:
    """Refuse (:class:`CheckpointError`, one line naming the file and the import) a pickle that imports anything
    but what an RLlib module checkpoint needs; see the module doc."""
    for module, name in pickle_imports(path):
        if (module, name) not in ALLOWED_IMPORTS and not _is_allowed_class(module, name):
            raise CheckpointError(
                f"refusing checkpoint file {path}: loading it would import {module}.{name}, which is not an RLlib "
                f"module, catalog, gymnasium space or NumPy array (a pickle can run code when it is loaded; load "
                f"only checkpoints you trust, see docs/cluster.md, Security)")


def _is_allowed_class(module: str, name: str) -> bool:
    """Whether ``module.name`` is an RLModule, a Catalog or a gymnasium space class. Imports ``module`` to tell,
    only when it lies in :data:`CLASS_PACKAGES` (installed code: RLlib's, gymnasium's, this project's)."""
    if not module.startswith(CLASS_PACKAGES) or not _DOTTED.fullmatch(module) or not name.isidentifier():
        return False
    import gymnasium
    from ray.rllib.core.models.catalog import Catalog
    from ray.rllib.core.rl_module.rl_module import RLModule

    try:
        value = getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 (a module that does not import, or lacks the name: not an allowed class)
        return False
    return isinstance(value, type) and issubclass(value, (RLModule, Catalog, gymnasium.spaces.Space))
