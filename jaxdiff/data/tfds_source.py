"""TFDS datasets by name, read with ``tfds.data_source`` (ArrayRecord random access; no TensorFlow
needed to *read*), and their preparation on a machine with internet and TensorFlow.

``tensorflow_datasets`` is an optional dependency (``pip install "jaxdiff[tfds]"``): it is imported
only when a TFDS dataset is used.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import socket

from jaxdiff.data.local_sources import LOCAL_DATASETS
from jaxdiff.data.readers import DEBIAN_FASHION_MNIST
from jaxdiff.data.sources import DataError, LazySource, fit_image


def _import_tfds():
    """``tensorflow_datasets``, or a one-line :class:`DataError` saying how to install it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError('TFDS datasets need tensorflow-datasets: pip install "jaxdiff[tfds]"') from None
    return tfds


def _tfds_builder(name: str, data_dir: str, file_format: str | None = None):
    tfds = _import_tfds()

    try:
        return tfds.builder(name, data_dir=data_dir or None, **({"file_format": file_format} if file_format else {}))
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(name, list(LOCAL_DATASETS) + tfds.list_builders(
            with_community_datasets=False), n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise DataError(f"data.dataset={name!r} is neither a local source ({', '.join(LOCAL_DATASETS)}) nor a "
                        f"TFDS dataset; {hint}see https://www.tensorflow.org/datasets/catalog") from None


def _offline_hints(name: str) -> str:
    """How else to get ``name`` onto a machine without internet (one sentence, for error messages)."""
    base = name.split(":")[0].split("/")[0]
    if base == "fashion_mnist":
        return ("or read the idx files: `apt-get install dataset-fashion-mnist` and use "
                "--config=configs/fashion_mnist.py "
                f"(--config.data.dataset=idx --config.data.data_dir={DEBIAN_FASHION_MNIST})")
    if base in ("mnist", "kmnist", "emnist"):
        return ("or read the idx files: copy train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-*.gz "
                "into a folder and set --config.data.dataset=idx --config.data.data_dir=FOLDER")
    if base in ("cifar10", "cifar100"):
        return ("or read the python batches: copy cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html, "
                "or torchvision's ./data/cifar-10-batches-py) into a folder and set "
                "--config.data.dataset=cifar_python --config.data.data_dir=FOLDER")
    return "or put the images in a folder and set --config.data.dataset=image_folder --config.data.data_dir=FOLDER"


def _offline_route(name: str) -> str:
    """How to get TFDS dataset ``name`` prepared elsewhere and onto this machine (for error messages)."""
    return (f"run `python -m jaxdiff.data prepare {name} --data_dir DIR` on a machine with internet and "
            f"TensorFlow, copy DIR here and set --config.data.data_dir=DIR; {_offline_hints(name)}")


def _network_available(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    """Whether ``host:443`` answers within ``timeout`` s (assumed yes behind an HTTP(S) proxy)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def prepare_tfds(name: str, data_dir: str = "") -> str:
    """Download and prepare TFDS dataset ``name`` as ArrayRecord in ``data_dir``; returns its path.

    Needs internet and TensorFlow (TFDS encodes images with it while preparing; reading does not).
    """
    builder = _tfds_builder(name, data_dir, file_format="array_record")
    where = os.path.dirname(os.path.dirname(str(builder.data_path)))
    howto = _offline_route(name)
    if not _has_tensorflow():
        raise DataError(f"TFDS dataset {name!r} is not prepared in {where} and preparing it needs TensorFlow "
                        f"(`pip install tensorflow-cpu`); or {howto}")
    if not _network_available():
        raise DataError(f"TFDS dataset {name!r} is not prepared in {where} and this machine has no internet to "
                        f"download it; {howto}")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # TF must not grab the accelerator JAX trains on
    builder.download_and_prepare(file_format="array_record")
    return str(builder.data_path)


def load_tfds(name: str, split: str = "train", *, image_size: int, data_dir: str = "", channels: int = 0,
              download: bool = False, image_key: str = "image", label_key: str = "label", builder=None) -> LazySource:
    """TFDS dataset ``name``'s ``split`` read with ``tfds.data_source`` (ArrayRecord, random access), its
    images (feature ``image_key``; labels ``label_key`` when it has them) fitted to ``image_size`` and
    ``channels`` (0: their own).

    A dataset that is not prepared in ``data_dir`` is downloaded when ``download`` (see
    :func:`prepare_tfds`), otherwise a :class:`DataError` says how to get it offline. ``builder`` is
    the one :func:`check_tfds_features` returned, if the caller has it (it is made otherwise).
    """
    tfds = _import_tfds()

    size = image_size
    builder = builder or check_tfds_features(name, data_dir, image_key)

    def open_source():
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)

    try:
        ds = open_source()
    except Exception as e:  # TFDS raises many types here; diagnose from the builder's state
        version_dir = str(builder.data_path)
        if not builder.is_prepared():
            if not download:
                raise DataError(
                    f"TFDS dataset {name!r} is not prepared in {os.path.dirname(os.path.dirname(version_dir))}; set "
                    f"--config.data.download=True (needs internet and TensorFlow), or {_offline_route(name)}"
                    ) from None
            prepare_tfds(name, data_dir)
            ds = open_source()
        elif isinstance(e, NotImplementedError):  # TFDS: prepared in a format without random access
            stored = getattr(builder.info.file_format, "value", builder.info.file_format)
            raise DataError(f"TFDS dataset {name!r} in {version_dir} is stored as {stored}, which has no random "
                            f"access; convert it: `tfds convert_format --dataset_version_dir={version_dir} "
                            "--out_file_format=array_record` (or prepare it again with file_format=array_record)"
                            ) from None
        else:
            splits = ", ".join(builder.info.splits) or "unknown"
            raise DataError(f"TFDS dataset {name!r} cannot read split {split!r} (available: {splits}): "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    features = ds.dataset_info.features
    image_feature = features[image_key]
    label_feature = features[label_key] if label_key in features else None
    num_classes = int(getattr(label_feature, "num_classes", 0) or 0)
    class_names = tuple(getattr(label_feature, "names", ()) or ()) if num_classes else ()
    own_channels = image_feature.shape[-1] if image_feature.shape and image_feature.shape[-1] else 3
    c = channels or own_channels
    if len(ds) == 0:
        raise DataError(f"TFDS dataset {name!r} split {split!r} is empty")

    def read_one(i):
        ex = ds[i]
        label = int(ex[label_key]) if num_classes else 0
        return fit_image(ex[image_key], size, c), label

    return LazySource(read_one, len(ds), num_classes, name, (size, size, c), class_names)


def check_tfds_features(name: str, data_dir: str = "", image_key: str = "image"):
    """The TFDS builder of dataset ``name`` (prepared in ``data_dir``, or TFDS's default), after checking
    it has an image feature ``image_key``."""
    tfds = _import_tfds()

    builder = _tfds_builder(name, data_dir)
    features = builder.info.features
    keys = list(features.keys()) if hasattr(features, "keys") else []
    feature = features[image_key] if image_key in keys else None
    if not isinstance(feature, tfds.features.Image):
        images = [k for k in keys if isinstance(features[k], tfds.features.Image)]
        fix = (f"set --config.data.image_key={images[0]}" if images else
               "it is not an image dataset")
        raise DataError(f"TFDS dataset {name!r} has no image feature {image_key!r} "
                        f"(features: {', '.join(keys)}); {fix}")
    return builder
