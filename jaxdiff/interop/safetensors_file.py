"""Read and write ``.safetensors`` weight files with the safetensors NumPy API, every failure one line.

The format: an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte
offsets; ``__metadata__``), then the raw little-endian tensors. A truncated download, a file of
another format or a header that does not match the data is a :class:`WeightsError` naming the file.
"""

from __future__ import annotations

import os

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from jaxdiff.common import paths


class WeightsError(ValueError):
    """A weights file (or the model folder holding it) is missing, unreadable, or does not fit the model."""


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: array}`` of the safetensors file at ``path`` (float16 / float32 / integer tensors)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path} does not exist")
    size = os.path.getsize(path)
    if size < 8:
        raise WeightsError(f"weights file {path} is truncated ({size} bytes): download it again")
    try:
        return load_file(path)
    except SafetensorError as e:  # bad header, data shorter than the header says, ...
        raise WeightsError(f"cannot read {path} as safetensors ({' '.join(str(e).split())}): is it complete "
                           "and a .safetensors file?") from None
    except (TypeError, ValueError) as e:  # e.g. bfloat16, which NumPy has no dtype for
        raise WeightsError(f"cannot read {path} with NumPy ({' '.join(str(e).split())}): save it as float32 "
                           "or float16") from None


def write(path: paths.PathLike, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write ``arrays`` to ``path`` (a local file, atomically, or a ``gs://`` URL), ``metadata`` as the
    header's string map."""
    paths.write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=metadata))
