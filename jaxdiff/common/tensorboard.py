"""TensorBoard event files of a run, written with tensorboardX (no TensorFlow needed): scalars
and sample grids next to ``metrics.jsonl``, in ``<workdir>/tensorboard``. Process 0 writes; the
other processes get a writer that does nothing. A resumed run passes its first step as
``purge_step``, so TensorBoard drops what a killed run logged after its last checkpoint.

    tensorboard --logdir <workdir>/tensorboard
"""

from __future__ import annotations

import numpy as np

from jaxdiff.common import paths


class TensorBoard:
    """``scalars(step, {name: value})``, ``image(tag, step, uint8 [H, W, C])``, ``close()``."""

    def __init__(self, workdir: paths.PathLike, enabled: bool = True, purge_step: int | None = None):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter  # optional heavy import: only for a process that writes

            self._writer = SummaryWriter(str(paths.as_path(workdir) / "tensorboard"), purge_step=purge_step,
                                         flush_secs=30)

    def scalars(self, step: int, values: dict, prefix: str = "train/") -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            if name != "step":
                self._writer.add_scalar(prefix + name, float(value), int(step))

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        if self._writer is None:
            return
        image = np.asarray(image)
        self._writer.add_image(tag, image[..., :3] if image.shape[-1] != 1 else image, int(step), dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
