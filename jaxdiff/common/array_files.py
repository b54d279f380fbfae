"""``.npy`` and ``.npz`` files read without trusting their headers.

``np.load`` trusts a file: an ``.npy`` header's ``shape`` is allocated before the data is read (a
100-byte file can ask for terabytes), and with ``allow_pickle=True`` an object array is a pickle that
runs code. Here every array's header is read first (``numpy.lib.format``, header length bounded),
object and structured dtypes are refused, and the bytes the shape needs must be in the file before
anything is allocated; an ``.npz`` member may inflate at most as far as deflate can (its ratio is
bounded, about 1032:1). Every failure is :class:`ArrayFileError` (one line). Readers: the edit inputs
and masks, the Inception weights in ``.npz`` form, the evaluation caches.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from jaxdiff.common.errors import one_line

MAX_HEADER = 10_000  # bytes of an .npy header (NumPy's own default limit)
MAX_INFLATION = 1100  # deflate's limit is about 1032:1; a member claiming more is refused unread


class ArrayFileError(ValueError):
    """The bytes are not an ``.npy`` / ``.npz`` file of plain arrays that fit in them."""


def _read_npy(f, size: int) -> np.ndarray:
    """The array of the ``.npy`` file open as ``f`` (``size`` bytes from its start)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER)
    else:
        raise ArrayFileError(f".npy format version {version} is not read (1.0 and 2.0 are)")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        raise ArrayFileError(f"dtype {dtype} holds Python objects, fields or nothing: plain arrays only")
    count = 1
    for n in shape:
        count *= int(n)
    need, left = count * dtype.itemsize, size - f.tell()
    if need > left:
        raise ArrayFileError(f"the header says {'x'.join(map(str, shape)) or 'scalar'} {dtype} ({need:,} bytes), "
                             f"the file holds {left:,}: truncated or damaged")
    data = np.frombuffer(f.read(need), dtype, count)
    return data.reshape(shape, order="F" if fortran else "C").copy()


def _named(name: str, e: Exception) -> ArrayFileError:
    return ArrayFileError(f"{name}: {e}" if name else str(e))


def npy_from_bytes(data: bytes, name: str = "") -> np.ndarray:
    """The array of an ``.npy`` file's bytes (see the module docstring); errors name ``name``."""
    try:
        return _read_npy(io.BytesIO(data), len(data))
    except ArrayFileError as e:
        raise _named(name, e) from None
    except Exception as e:  # a damaged header fails in many ways (ValueError, SyntaxError, ...)
        raise _named(name, ArrayFileError(f"not a readable .npy file ({one_line(e)})")) from None


def npz_from_bytes(data: bytes, name: str = "") -> dict:
    """``{member: array}`` of an ``.npz`` file's bytes (every ``.npy`` member; see the module
    docstring); errors name ``name``."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            out = {}
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                if info.file_size > max(MAX_INFLATION * info.compress_size, 1 << 16):
                    raise ArrayFileError(f"member {info.filename} claims to inflate {info.compress_size:,} bytes to "
                                         f"{info.file_size:,}")
                out[info.filename[:-4]] = npy_from_bytes(z.read(info), f"member {info.filename}")
            return out
    except ArrayFileError as e:
        raise _named(name, e) from None
    except Exception as e:  # zipfile, zlib and struct fail in many ways on a damaged archive
        raise _named(name, ArrayFileError(f"not a readable .npz file ({one_line(e)})")) from None
