"""The deterministic, resumable order of training batches, and the thread pool that reads them ahead.

The example order is a pure function of ``(seed, step)``: epoch ``e`` visits ``permutation(seed, e)``
in global batches of ``B``, dropping the remainder. So the position of the stream *is* the training
step: a resumed run asks for step ``s`` and gets exactly the batch an uninterrupted run would have
seen, with no iterator state to save beyond the step. Each process reads only its
``1 / process_count`` slice of every global batch, so the global batch is the same for any number
of hosts.

**Why not Grain's DataLoader.** Grain's ``MapDataset`` is random-access too and could express the
same thing, but its shuffle and ``[process_index::process_count]`` sharding define the order per host
(a different global batch for a different host count), and its iterator state is one more thing to
checkpoint. Here the order is a few lines of NumPy that are trivially a function of ``(seed, step)``,
and a small thread pool reads batches ahead (PIL decoding and NumPy copies release the GIL); the
benchmark in ``bench/data_pipeline.py`` shows it outruns the training step by a wide margin.
"""

from __future__ import annotations

import concurrent.futures
from typing import Iterator

import numpy as np

from jaxdiff.data.sources import DataError


def local_batch_size(batch_size: int, process_count: int) -> int:
    """Rows of each global batch one process reads; :class:`DataError` unless they divide evenly."""
    if batch_size % process_count:
        raise DataError(f"batch_size={batch_size} does not divide over {process_count} processes")
    return batch_size // process_count


def check_batch_size(batch_size: int, num_examples: int, process_count: int = 1) -> None:
    """Raise :class:`DataError` unless global batches of ``batch_size`` rows split evenly over
    ``process_count`` processes and fit in a dataset of ``num_examples`` examples (the checks
    :func:`batch_stream` makes on its first batch, to make before anything is written)."""
    local_batch_size(batch_size, process_count)
    if batch_size > num_examples:
        raise DataError(f"training.batch_size={batch_size} is larger than the dataset ({num_examples} examples)")


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The visiting order of epoch ``epoch``: ``permutation(num_examples)`` drawn from PCG64 seeded
    with ``[seed, epoch]`` (NumPy's SeedSequence), identical on every host and platform."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(seed: int, step: int, batch_size: int, num_examples: int) -> np.ndarray:
    """Indices of the global batch at ``step``: slice ``step mod E`` of ``permutation(seed, step // E)``,
    where ``E = num_examples // batch_size`` batches make an epoch."""
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise DataError(f"batch_size={batch_size} is larger than the dataset ({num_examples} examples)")
    epoch, i = divmod(step, per_epoch)
    return epoch_permutation(seed, epoch, num_examples)[i * batch_size:(i + 1) * batch_size]


def local_batch_indices(seed: int, step: int, batch_size: int, num_examples: int, process_index: int = 0,
                        process_count: int = 1) -> np.ndarray:
    """This process's contiguous ``batch_size / process_count`` slice of the global batch at ``step``.

    The global batch is sorted first (sequential reads) and then sliced, so the global row order is
    the same for every process count: row ``i`` meets the same noise (drawn per global row in the
    train step) whether one process or many feed it, and multi-host training equals single-host."""
    local = local_batch_size(batch_size, process_count)
    return np.sort(batch_indices(seed, step, batch_size, num_examples))[
        process_index * local:(process_index + 1) * local]


def batch_stream(source, seed: int, start_step: int, batch_size: int, process_index: int = 0,
                 process_count: int = 1, prefetch: int = 2, num_workers: int = 1) -> Iterator[dict]:
    """Yield ``{"image": uint8 [B/P, H, W, C], "label": int32 [B/P]}`` for steps ``start_step, ...``:
    this process's slice of each global batch (:func:`local_batch_indices`).

    ``num_workers`` threads read up to ``prefetch`` batches ahead; batches come out in step order and
    are the same whatever the thread timing. Closing the generator stops the readers.
    """
    local = local_batch_size(batch_size, process_count)
    n = len(source)
    batch_indices(seed, 0, batch_size, n)  # raises now if the batch is larger than the dataset
    per_epoch = n // batch_size
    perms: dict[int, np.ndarray] = {}  # the current epoch's permutation (one draw per epoch, not per step)

    def indices(step):
        epoch, i = divmod(step, per_epoch)
        if epoch not in perms:
            perms.clear()
            perms[epoch] = epoch_permutation(seed, epoch, n)
        rows = perms[epoch][i * batch_size:(i + 1) * batch_size]
        return np.sort(rows)[process_index * local:(process_index + 1) * local]  # see local_batch_indices

    def read(idx):
        images, labels = source[idx]
        return {"image": images, "label": labels}

    pool = concurrent.futures.ThreadPoolExecutor(max(num_workers, 1), thread_name_prefix="jaxdiff-data")
    pending: list = []
    step = start_step
    try:
        while True:
            while len(pending) < max(prefetch, 1):
                pending.append(pool.submit(read, indices(step)))  # indices on this thread: perms unshared
                step += 1
            yield pending.pop(0).result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
