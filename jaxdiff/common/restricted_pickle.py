"""Unpickling that runs no code from the file.

A pickle is a program: its ``GLOBAL`` / ``STACK_GLOBAL`` (and ``INST``, ``OBJ``, ``EXT*``) opcodes
name any importable callable and ``REDUCE`` calls it, so ``pickle.load`` of a crafted file runs
whatever the file says. Every other opcode only builds lists, dicts, tuples, strings and numbers
(read from the file, never allocated ahead of it: see :class:`RestrictedUnpickler`).
:class:`RestrictedUnpickler` resolves a global only from the reader's ``allowed`` table (module and
name to the object to use, often a stand-in that checks its arguments), so nothing outside it can be
reached; anything else is the reader's one-line error, raised before the global is imported.
:func:`load` wraps the whole read so that every way a damaged pickle fails (truncation, a bad
opcode, a wrong type on the stack) is that same error.

Readers: :mod:`jaxdiff.common.torch_pickle` (PyTorch state dicts) and the CIFAR batches of
:mod:`jaxdiff.data.cifar_python` (:data:`NUMPY_ARRAYS`: NumPy arrays of plain dtypes).
"""

from __future__ import annotations

import io
import pickle
from typing import Mapping

import numpy as np

from jaxdiff.common.errors import one_line


class RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001 (the Python implementation: see below)
    """An unpickler whose globals are ``allowed[(module, name)]`` and nothing else; any other global
    raises ``error`` ("refusing to unpickle module.name: ``what``") without importing it. Persistent ids
    are refused too (the base class's ``persistent_load``), unless a subclass reads them.

    It is the Python implementation of :class:`pickle.Unpickler`: the C one allocates the length a
    ``BINBYTES`` opcode states before reading it (4 GiB from a 10-byte file), where this one reads
    what the file holds; its one opcode that allocates first, ``BYTEARRAY8``, is refused."""

    def __init__(self, file, allowed: Mapping[tuple[str, str], object], error: type[Exception], what: str,
                 **kwargs):
        super().__init__(file, **kwargs)
        self.allowed, self.error, self.what = allowed, error, what

    def _refuse_bytearray(self):
        raise self.error("a BYTEARRAY8 opcode (protocol 5), which would allocate the length it states: not read")

    # the Python implementation's opcodes, but BYTEARRAY8, which allocates its stated length first
    dispatch = {**pickle._Unpickler.dispatch, pickle.BYTEARRAY8[0]: _refuse_bytearray}  # noqa: SLF001

    def find_class(self, module, name):
        found = self.allowed.get((module, name))
        if found is None:
            raise self.error(f"refusing to unpickle {(module + '.' + name)[:120]!r}: {self.what}")
        return found


def load(data: bytes, allowed: Mapping[tuple[str, str], object], error: type[Exception], what: str,
         **kwargs) -> object:
    """The object of the pickle ``data`` read by a :class:`RestrictedUnpickler` (``kwargs``: the
    unpickler's, e.g. ``encoding="bytes"`` for Python 2 pickles); raises ``error`` (one line) for a
    refused global and for a pickle that does not load."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), allowed, error, what, **kwargs).load()
    except error:
        raise
    except EOFError:
        raise error("the pickle is cut off: the file is truncated") from None
    except Exception as e:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, TypeError, ...)
        raise error(f"not a readable pickle ({one_line(e)})") from None


class _ArrayType:
    """What ``numpy.ndarray`` unpickles to: only a marker for :func:`_reconstruct` (calling the real class
    would allocate any shape the file names)."""

    def __repr__(self):
        return "numpy.ndarray"


NDARRAY = _ArrayType()


def _reconstruct(subtype, shape, dtype):
    """Stand-in for ``numpy.core.multiarray._reconstruct``: the empty array a pickled ndarray starts as
    (its data follows in ``__setstate__``, from the file's own bytes). Refuses any other type and a
    non-empty shape, which would allocate memory the file does not hold."""
    if subtype is not NDARRAY:
        raise TypeError(f"_reconstruct of {type(subtype).__name__}, not numpy.ndarray")
    if not isinstance(shape, tuple) or any(not isinstance(n, int) or n < 0 for n in shape) or 0 not in shape:
        raise TypeError(f"_reconstruct with shape {shape!r}: a pickled array starts empty")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


def _dtype(spec, align=False, copy=False):
    """Stand-in for ``numpy.dtype``: a plain (not object, not structured) dtype."""
    if isinstance(spec, bytes):
        spec = spec.decode("latin-1")
    if not isinstance(spec, str):
        raise TypeError(f"a dtype spelled {type(spec).__name__}, not a type code")
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise TypeError(f"dtype {dtype} holds Python objects or fields")
    return dtype


def _latin1_bytes(text, encoding="latin1", errors="strict"):
    """Stand-in for ``_codecs.encode``, which Python 3 writes for ``bytes`` in protocol-2 pickles
    (``encode(text, "latin1")``): that encoding only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise TypeError(f"_codecs.encode with {encoding!r}: only latin1 text (bytes in protocol 2) is read")
    return text.encode("latin-1")


# NumPy arrays as NumPy >= 1 pickles them (numpy._core since NumPy 2), of plain dtypes, and bytes as
# Python 3 writes them in protocol 2: what the CIFAR "python version" batches hold besides dicts, lists,
# bytes and ints.
NUMPY_ARRAYS = {
    **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_bytes,
}
