"""Work-directory paths and writes through ``etils.epath``: local folders and object stores alike.

A work directory may be a local folder or a URL such as ``gs://bucket/run`` (``s3://``, ``az://``:
whatever ``epath`` has a backend for). Every file jaxdiff puts there (checkpoints, metrics, pictures,
evaluation caches) goes through :func:`as_path` and the writers below, never through ``open()`` on a
string, so a TPU pod's hosts write the one shared bucket and not each its own disk. Files shared by
all processes are written by process 0 alone (:func:`is_writer`); Orbax coordinates checkpoints.

Writes are whole-file and atomic where the backend allows: a local file is written to a temporary
name and renamed; an object store makes a new object visible only when it is complete. Appending to
an object means rewriting it (:func:`append_text`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import jax
import numpy as np
from etils import epath

from jaxdiff.common import array_files

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
    """Whether ``path`` names an object store (``gs://...``) rather than a local file."""
    return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: a local path expanded (``~``) and made absolute, a URL untouched."""
    text = os.fspath(path)
    if is_url(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def request_digest(request: dict, length: int = 6) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``request`` (every setting that changes an
    output's content, as sorted JSON). In the output's name it keeps two requests that differ in any
    setting from sharing a file, while the same request always names the same one."""
    text = json.dumps(request, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def is_writer() -> bool:
    """Whether this process writes the files shared by all processes (process 0)."""
    return jax.process_index() == 0


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary name + rename locally); parents are created."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_url(path):
        path.write_bytes(data)
        return
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`write_bytes`."""
    write_bytes(path, text.encode())


def append_text(path: PathLike, text: str) -> None:
    """Append ``text`` to ``path`` (an object store rewrites the whole object)."""
    path = as_path(path)
    if is_url(path):
        write_text(path, (path.read_text() if path.exists() else "") + text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(text)


def save_npz(path: PathLike, compressed: bool = False, **arrays) -> None:
    """``np.savez`` (or ``savez_compressed``) of ``arrays`` to ``path``, atomically."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    write_bytes(path, buf.getvalue())


def load_npz(path: PathLike) -> dict:
    """All arrays of the ``.npz`` file at ``path``, read into memory without trusting its headers
    (:func:`jaxdiff.common.array_files.npz_from_bytes`: :class:`~jaxdiff.common.array_files.ArrayFileError`
    naming the file when it is not a readable ``.npz`` of plain arrays)."""
    return array_files.npz_from_bytes(as_path(path).read_bytes(), str(path))


def save_figure(fig, path: PathLike, **savefig_kwargs) -> None:
    """Save a matplotlib figure as PNG to ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    write_bytes(path, buf.getvalue())


def save_pil_image(image, path: PathLike) -> None:
    """Save a PIL image as PNG to ``path``."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())
