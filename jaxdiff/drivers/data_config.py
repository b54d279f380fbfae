"""The ``data`` block: its checks (sizes, switches, that the dataset exists and may be flipped, without
reading it) and the source it names, loaded through the library's plain-argument
:func:`jaxdiff.data.load_source`."""

from __future__ import annotations

from jaxdiff import data as data_lib
from jaxdiff.data import DataError
from jaxdiff.drivers.checks import ConfigError, boolean, name, path_string, positive

# The data fields that are jaxdiff.data.load_source's keyword arguments, under the same names.
LOAD_FIELDS = ("image_size", "data_dir", "channels", "download", "image_key", "label_key", "cache_max_mb",
               "num_workers")


def check_source(data_config):
    """Raise :class:`~jaxdiff.data.DataError` for the first unusable ``config.data`` value, without
    reading data: sizes and switches, that the dataset name is a local source or a registered TFDS
    image dataset, that local sources have an existing ``data_dir``, and that digits are never flipped.
    Returns the TFDS builder it made for a TFDS dataset (``None`` for a local source)."""
    d = data_config
    data_lib.check_image_args(d.image_size, d.channels)
    data_lib.check_loader_args(d.num_workers, d.cache_max_mb, d.prefetch)
    return data_lib.check_dataset(d.dataset, d.data_dir, d.image_key, d.random_flip)


def check(config) -> None:
    """Raise :class:`ConfigError` for the first invalid ``data.*`` value."""
    dc = config.data
    positive(dc.image_size, "data.image_size")
    boolean(dc.download, "data.download")
    boolean(dc.random_flip, "data.random_flip")
    name(dc.image_key, "data.image_key")
    name(dc.label_key, "data.label_key")
    path_string(dc.data_dir, "data.data_dir")
    try:
        check_source(dc)
    except DataError as e:
        raise ConfigError(str(e)) from None


def load_arguments(data_config) -> dict:
    """The keyword arguments of :func:`jaxdiff.data.load_source` a ``config.data`` block gives."""
    return {field: data_config[field] for field in LOAD_FIELDS}


def load_source(data_config, split: str = "train"):
    """The source named by ``data_config.dataset`` for ``split``, at ``data_config.image_size``
    (:func:`jaxdiff.data.load_source` with the block's fields). Raises :class:`~jaxdiff.data.DataError`
    (one line) before anything is read."""
    d = data_config
    data_lib.check_image_args(d.image_size, d.channels)
    data_lib.check_loader_args(d.num_workers, d.cache_max_mb, d.prefetch)
    data_lib.check_flip(d.dataset, d.random_flip)
    return data_lib.load_source(d.dataset, split, **load_arguments(d))
