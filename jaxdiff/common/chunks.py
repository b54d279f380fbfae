"""Mapping a fixed-size compiled function over any number of rows: the last chunk padded, the
padding dropped. One compiled shape then serves every request size."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """``array [m, ...]`` padded to ``[size, ...]`` by repeating its last row (``m >= 1``)."""
    array = np.asarray(array)
    m = array.shape[0]
    if m == size:
        return array
    return np.concatenate([array, np.repeat(array[-1:], size - m, axis=0)])


def map_chunks(fn: Callable[[int, Any], Any], inputs, chunk_size: int, progress=None):
    """``fn(c, chunk)`` over chunks of ``chunk_size`` rows of ``inputs`` (a pytree of arrays sharing
    their leading axis ``N``), concatenated back to ``N`` rows.

    Chunk ``c`` holds rows ``[c * chunk_size, (c + 1) * chunk_size)``; the last one is padded to the
    full size with :func:`pad_rows`. ``fn`` returns a pytree of arrays whose leading axis is
    ``chunk_size``; the padding rows are dropped from every leaf and the chunks concatenated (as
    NumPy, on the host). ``progress`` (a ``tqdm`` bar, or anything with ``update(n)``) is advanced
    by the valid rows of each chunk (it may raise to stop the work between chunks, as the drivers'
    signal-aware bars do). Returns that pytree of ``[N, ...]`` arrays."""
    leaves = jax.tree.leaves(inputs)
    if not leaves:
        raise ValueError("map_chunks needs at least one input array")
    n = int(np.shape(leaves[0])[0])
    if n < 1 or chunk_size < 1:
        raise ValueError(f"map_chunks needs at least one row and a positive chunk size, got {n} rows, "
                         f"chunk size {chunk_size}")
    outs = []
    for c, start in enumerate(range(0, n, chunk_size)):
        m = min(chunk_size, n - start)
        chunk = jax.tree.map(lambda a: pad_rows(np.asarray(a)[start:start + m], chunk_size), inputs)
        outs.append(jax.tree.map(lambda a: np.asarray(a)[:m], fn(c, chunk)))
        if progress is not None:
            progress.update(m)
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
