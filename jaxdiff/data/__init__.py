"""Data: image sources, the deterministic resumable batch stream, and on-device preprocessing.

================= =====================================================================================
``sources``       :class:`ArraySource` / :class:`LazySource`, image geometry, :class:`DataError`
``readers``       local digit arrays: scikit-learn digits, idx files
``image_files``   a folder of images, and one image file read with its checks (:func:`read_image`)
``cifar_python``  CIFAR-10 / CIFAR-100 python batches, read without running code from them
``local_sources`` the registry of local readers: name -> reader, whether it needs ``data_dir``
``tfds_source``   TFDS datasets by name (``tfds.data_source``), preparing them offline
``loading``       a dataset name and plain arguments -> checks -> the source (:func:`load_source`)
``stream``        the order of batches as a pure function of ``(seed, step)``; :func:`batch_stream`
``transforms``    uint8 -> [-1, 1] and random flips inside the compiled step (:func:`preprocess`)
``testing``       :func:`write_tfds_dataset`, a real TFDS dataset for tests without TensorFlow
================= =====================================================================================

``python -m jaxdiff.data info --dataset idx --data_dir DIR`` shows what a configuration will read.
"""

from jaxdiff.data.loading import (NO_FLIP_DATASETS, check_dataset, check_flip, check_image_args, check_loader_args,
                                  load_source)
from jaxdiff.data.cifar_python import load_cifar_python
from jaxdiff.data.image_files import image_mode, load_image_folder, read_image
from jaxdiff.data.local_sources import LOCAL_DATASETS, LOCAL_READERS, LocalReader
from jaxdiff.data.readers import DEBIAN_FASHION_MNIST, load_digits, load_idx, read_idx
from jaxdiff.data.sources import ArraySource, DataError, LazySource, fit_image, materialize, resize_uint8
from jaxdiff.data.stream import batch_indices, batch_stream, check_batch_size, epoch_permutation, local_batch_indices
from jaxdiff.data.transforms import preprocess

__all__ = [
    "ArraySource", "DEBIAN_FASHION_MNIST", "DataError", "LOCAL_DATASETS", "LOCAL_READERS", "LazySource",
    "LocalReader", "NO_FLIP_DATASETS", "batch_indices", "batch_stream", "check_batch_size", "check_dataset",
    "check_flip", "check_image_args", "check_loader_args", "epoch_permutation", "fit_image",
    "image_mode", "load_cifar_python", "load_digits", "load_idx", "load_image_folder", "load_source",
    "local_batch_indices", "materialize", "preprocess", "read_idx", "read_image", "resize_uint8",
]
