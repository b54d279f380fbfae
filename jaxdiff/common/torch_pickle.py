"""Read ``torch.save`` files of tensors (state dicts: pytorch-fid's Inception ``.pth``, diffusers'
``.bin``) into NumPy arrays, without PyTorch and without running any code from the file.

Both of PyTorch's formats are read:

* the zip format (``torch.save``'s default since PyTorch 1.6): ``<archive>/data.pkl``, a pickle
  whose tensors refer to storages by key, and ``<archive>/data/<key>``, each storage's raw bytes
  (``<archive>/byteorder`` says their byte order; little-endian when absent);
* the legacy format (``_use_new_zipfile_serialization=False``, and every file saved before 1.6):
  five pickles in a row (magic number, protocol version, system info, the object, the list of
  storage keys), then for each key an int64 element count and the storage's little-endian bytes.

The pickle is read by a :class:`~jaxdiff.common.restricted_pickle.RestrictedUnpickler` that knows
only what a state dict is made of: ``torch._utils._rebuild_tensor_v2`` (a tensor: storage, offset, size, stride),
``torch._utils._rebuild_parameter`` (an ``nn.Parameter`` around one), ``collections.OrderedDict``
and the typed storage classes (``torch.FloatStorage``, ...); any other global is refused with a
one-line :class:`TorchPickleError`, as are truncated or inconsistent files. Tensors come back as
C-contiguous arrays owning their data (strides and storage offsets applied), in their own dtype,
except ``bfloat16``, which NumPy lacks: it is widened to float32 (exactly). The pre-0.4 tar
format is not read (load it with PyTorch and save it again).
"""

from __future__ import annotations

import collections
import io
import math
import os
import struct
import tarfile
import zipfile
from typing import NamedTuple

import numpy as np

from jaxdiff.common.errors import one_line
from jaxdiff.common.restricted_pickle import RestrictedUnpickler

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION
ZIP_MAGIC = b"PK\x03\x04"
MAX_INFLATION = 16  # torch.save stores storages uncompressed: a member that inflates more is refused unread
BFLOAT16 = "bfloat16"  # stored as uint16 bit patterns, returned as float32
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": BFLOAT16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class TorchPickleError(ValueError):
    """The file is not a PyTorch file of tensors that this reader can read safely."""


class _StorageType(NamedTuple):
    """What ``torch.FloatStorage`` and its siblings unpickle to here."""

    name: str
    dtype: object


class _Storage(NamedTuple):
    """A storage the pickle refers to: its key, dtype, element count, and (legacy views) an offset."""

    key: str
    dtype: object
    numel: int
    offset: int = 0


class _Tensor(NamedTuple):
    """A tensor as ``_rebuild_tensor_v2`` describes it, turned into an array once the storages are read."""

    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


def _itemsize(dtype) -> int:
    return 2 if dtype is BFLOAT16 else np.dtype(dtype).itemsize


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records where the tensor lies in its storage."""
    if not isinstance(storage, _Storage):
        raise TorchPickleError(f"a tensor's storage is {type(storage).__name__}, not a storage reference")
    return _Tensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is its data."""
    if not isinstance(data, _Tensor):
        raise TorchPickleError(f"a parameter holds {type(data).__name__}, not a tensor")
    return data


ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _Unpickler(RestrictedUnpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; persistent ids become :class:`_Storage` references,
    collected in ``storages`` (``{key: _Storage}``)."""

    def __init__(self, f):
        super().__init__(f, ALLOWED_GLOBALS, TorchPickleError, "only tensors, storages and OrderedDicts are read "
                         "(a state dict, not a whole module or other objects)")
        self.storages: dict = {}

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")):
            kind = pid[0] if isinstance(pid, tuple) and pid else pid
            raise TorchPickleError(f"unsupported persistent object {kind!r} (a whole saved module?): "
                                   "save model.state_dict() instead")
        storage_type, key, _, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise TorchPickleError(f"storage of unknown type {storage_type!r}")
        if not isinstance(numel, int) or numel < 0:
            raise TorchPickleError(f"storage {key} has a bad element count {numel!r}")
        root = self.storages.setdefault(str(key), _Storage(str(key), storage_type.dtype, numel))
        if root.dtype is not storage_type.dtype:
            raise TorchPickleError(f"storage {key} is referred to with two dtypes")
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy storage view: (view key, element offset, element count)
            return root._replace(offset=int(view[1]))
        return root


def _unpickle(f, storages: dict | None = None):
    """The next pickle of ``f``; the storages it refers to go into ``storages`` (none are allowed
    without it)."""
    unpickler = _Unpickler(f)
    try:
        obj = unpickler.load()
    except EOFError:
        raise TorchPickleError("a pickle is cut off: the file is truncated") from None
    if storages is None and unpickler.storages:
        raise TorchPickleError("storage references outside the pickled object")
    if storages is not None:
        storages.update(unpickler.storages)
    return obj


def _array(storage: _Storage, data: bytes, byteorder: str) -> np.ndarray:
    """The whole storage as a flat array (read-only view of ``data``)."""
    need = storage.numel * _itemsize(storage.dtype)
    if len(data) < need:
        raise TorchPickleError(f"storage {storage.key} holds {len(data)} bytes, its {storage.numel} elements need "
                               f"{need}: the file is truncated or corrupt")
    raw_dtype = np.dtype(np.uint16 if storage.dtype is BFLOAT16 else storage.dtype)
    return np.frombuffer(data, raw_dtype.newbyteorder("<" if byteorder == "little" else ">"), storage.numel)


def _tensor(t: _Tensor, storages: dict) -> np.ndarray:
    """The C-contiguous array of tensor ``t`` (a strided view of its storage, copied)."""
    flat = storages[t.storage.key]
    start = t.storage.offset + t.offset
    if len(t.size) != len(t.stride) or min(t.size + t.stride + (start,)) < 0:
        raise TorchPickleError(f"tensor of size {t.size} with stride {t.stride} at offset {start} is malformed")
    if math.prod(t.size) > max(len(flat) - start, 0):
        raise TorchPickleError(f"tensor of size {t.size} has more elements than its storage holds after offset "
                               f"{start} ({len(flat)}): an expanded view or a corrupt file (save .contiguous())")
    if 0 not in t.size:
        last = start + sum((n - 1) * s for n, s in zip(t.size, t.stride))
        if last >= len(flat):
            raise TorchPickleError(f"tensor of size {t.size} with stride {t.stride} at offset {start} runs past "
                                   f"its storage of {len(flat)} elements: the file is corrupt")
    strides = tuple(s * flat.itemsize for s in t.stride)
    view = np.lib.stride_tricks.as_strided(flat[start:] if 0 not in t.size else flat[:0], t.size, strides)
    out = np.array(view, dtype=flat.dtype.newbyteorder("="), order="C")
    if t.storage.dtype is BFLOAT16:
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _materialise(obj, storages: dict):
    """``obj`` with every :class:`_Tensor` replaced by its array (dicts become plain dicts)."""
    if isinstance(obj, _Tensor):
        return _tensor(obj, storages)
    if isinstance(obj, (_Storage, _StorageType)):
        raise TorchPickleError("holds a bare storage or storage type, not tensors")
    if isinstance(obj, dict):
        return {k: _materialise(v, storages) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, storages) for v in obj)
    return obj


def _archive_prefix(names: list) -> str:
    """The folder of a zip archive's ``data.pkl`` (``"archive/"``, ``"<file stem>/"``)."""
    pickles = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
    if len(pickles) != 1:
        raise TorchPickleError("a zip archive without exactly one <archive>/data.pkl, so not a torch.save file")
    return pickles[0][:-len("data.pkl")]


def _read_member(z: zipfile.ZipFile, name: str, size: int) -> bytes:
    """The bytes of member ``name`` of an archive of ``size`` bytes, refused unread when the member
    claims more stored bytes than the archive has (a file object's ``read(n)`` allocates the ``n``
    asked for) or would inflate more than :data:`MAX_INFLATION` times (beyond 1 MiB): torch.save
    stores its members uncompressed."""
    info = z.getinfo(name)
    if info.compress_size > size:
        raise TorchPickleError(f"{name} claims {info.compress_size} stored bytes, the file has {size}: truncated "
                               "or damaged")
    if info.file_size > max(MAX_INFLATION * info.compress_size, 1 << 20):
        raise TorchPickleError(f"{name} inflates {info.compress_size} bytes to {info.file_size}: not a torch.save "
                               "file (it stores its members uncompressed)")
    return z.read(name)


def _load_zip(f, size: int) -> object:
    """The zip format from the open file ``f`` of ``size`` bytes."""
    with zipfile.ZipFile(f) as z:
        names = z.namelist()
        prefix = _archive_prefix(names)
        used: dict = {}
        obj = _unpickle(io.BytesIO(_read_member(z, prefix + "data.pkl", size)), used)
        byteorder = (_read_member(z, prefix + "byteorder", size).decode().strip() if prefix + "byteorder" in names
                     else "little")
        if byteorder not in ("little", "big"):
            raise TorchPickleError(f"byteorder record {byteorder!r} is neither little nor big")
        storages = {}
        for key, storage in used.items():
            name = f"{prefix}data/{key}"
            if name not in names:
                raise TorchPickleError(f"storage {name} is missing from the archive")
            storages[key] = _array(storage, _read_member(z, name, size), byteorder)
    return _materialise(obj, storages)


def _load_legacy(f, size: int) -> object:
    """The legacy format from the open file ``f`` of ``size`` bytes."""
    if _unpickle(f) != LEGACY_MAGIC:
        raise TorchPickleError("neither a zip archive nor a legacy torch.save file (wrong magic number)")
    protocol = _unpickle(f)
    if protocol != LEGACY_PROTOCOL:
        raise TorchPickleError(f"legacy torch.save protocol {protocol!r}, this reader knows {LEGACY_PROTOCOL}")
    info = _unpickle(f)
    if not (isinstance(info, dict) and info.get("little_endian", True)):
        raise TorchPickleError("a legacy torch.save file from a big-endian machine: re-save it with torch.save")
    used: dict = {}
    obj = _unpickle(f, used)
    keys = _unpickle(f)
    if not isinstance(keys, list) or set(map(str, keys)) != set(used):
        raise TorchPickleError("the list of storage keys does not match the storages the pickle refers to")
    storages = {}
    for key in map(str, keys):
        header = f.read(8)
        if len(header) < 8:
            raise TorchPickleError(f"the data of storage {key} is cut off: the file is truncated")
        (numel,) = struct.unpack("<q", header)
        storage = used[key]
        nbytes = numel * _itemsize(storage.dtype)
        if numel != storage.numel:
            raise TorchPickleError(f"storage {key} holds {numel} elements, the pickle says {storage.numel}: "
                                   "the file is corrupt")
        if f.tell() + nbytes > size:
            raise TorchPickleError(f"storage {key} needs {nbytes} bytes, {size - f.tell()} are left: "
                                   "the file is truncated")
        storages[key] = _array(storage, f.read(nbytes), "little")
    return _materialise(obj, storages)


def _is_plain_tar(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) is a valid (uncompressed) tar header, as the pre-0.4
    format starts; not :func:`tarfile.is_tarfile`, which also tries every decompressor (and LZMA
    allocates the dictionary size a damaged header states)."""
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False


def is_torch_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a ``torch.save`` file: a zip with ``<archive>/data.pkl``, or a
    pickle (the legacy format starts with one); also a zip too damaged to list, so that :func:`load`
    says what is wrong with it. An ``.npz`` (a zip of ``.npy`` files) is not."""
    with open(path, "rb") as f:
        head = f.read(4)
        if head != ZIP_MAGIC:
            return head.startswith(b"\x80")
        if not zipfile.is_zipfile(f):
            return True
        try:  # zipfile refuses a directory that claims more bytes than the file has, before reading it
            with zipfile.ZipFile(f) as z:
                _archive_prefix(z.namelist())
            return True
        except Exception:  # noqa: BLE001 (a damaged directory fails in zipfile, struct, ...): not a torch file
            return False


def load(path: str | os.PathLike) -> object:
    """The object ``torch.save`` wrote to ``path``, tensors as NumPy arrays (see the module docstring).

    Raises :class:`TorchPickleError` (one line) for anything else: a global outside
    :data:`ALLOWED_GLOBALS`, a truncated or corrupt file, a pre-0.4 tar file, not a PyTorch file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(tarfile.BLOCKSIZE)
            f.seek(0)
            size = os.fstat(f.fileno()).st_size
            if head[:4] == ZIP_MAGIC:  # members read from the file, each bounded by its size (_read_member)
                if not zipfile.is_zipfile(f):
                    raise TorchPickleError("a zip archive without its central directory: truncated or damaged")
                return _load_zip(f, size)
            if head.startswith(b"\x80"):  # a pickle's PROTO opcode
                # from memory: a file object's read(n) allocates the n bytes a damaged pickle length asks for
                return _load_legacy(io.BytesIO(f.read()), size)
        if _is_plain_tar(head):
            raise TorchPickleError("a pre-0.4 PyTorch tar file, which this reader does not read: load it with "
                                   "torch.load and save it again with torch.save")
        raise TorchPickleError("neither a zip archive nor a legacy torch.save file" + ("" if head else " (empty)"))
    except TorchPickleError as e:
        raise TorchPickleError(f"{os.fspath(path)}: {e}") from None
    except Exception as e:  # a damaged file fails in pickle, zipfile, zlib, struct, ... in many ways
        raise TorchPickleError(f"{os.fspath(path)}: not a readable torch.save file ({one_line(e)})") from None


def load_state_dict(path: str | os.PathLike) -> dict:
    """``{name: array}`` from a ``torch.save``'d state dict at ``path`` (see :func:`load`); anything
    that is not a flat mapping of names to tensors is a :class:`TorchPickleError`."""
    obj = load(path)
    if not isinstance(obj, dict):
        raise TorchPickleError(f"{os.fspath(path)}: holds a {type(obj).__name__}, not a state dict")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise TorchPickleError(f"{os.fspath(path)}: entry {key!r} is a {type(value).__name__}, not a tensor: "
                                   "not a plain state dict")
    return obj
