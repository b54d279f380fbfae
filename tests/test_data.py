"""Tests of jaxdiff.data: sources (idx, image folder, CIFAR python batches, TFDS via mock_data, the real
Fashion-MNIST files from Debian), the (seed, step) order, resume, host sharding and the on-device
preprocessing. Nothing here downloads."""

import gzip
import json
import os
import pickle
import shutil
import struct
import tarfile

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from configs import cifar10, cifar10_64, default, digits, fashion_mnist, fashion_mnist_cpu, mnist, mnist_cpu
from jaxdiff import data
from jaxdiff.data import __main__ as data_cli, tfds_source
from jaxdiff.data.testing import write_tfds_dataset
from jaxdiff.drivers import config_checks
from jaxdiff.drivers import data_config as data_block
from tests.conftest import RunsCode

FASHION = data.DEBIAN_FASHION_MNIST


def data_config(**overrides):
    d = ml_collections.ConfigDict(default.get_config().data.to_dict())
    d.update(overrides)
    return d


# --- hand-made idx files (written here with struct, independently of the reader) --------------------


def write_idx(path, array, type_byte=0x08, compress=False):
    array = np.asarray(array)
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    raw = header + big.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)
    return raw


def make_idx_dir(root, n_train=12, n_test=5, h=6, w=6, compress=True, names=("train", "t10k"), sep="-"):
    rng = np.random.default_rng(0)
    out = {}
    os.makedirs(root, exist_ok=True)
    for split, prefix, n in (("train", names[0], n_train), ("test", names[1], n_test)):
        images = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
        labels = (np.arange(n) % 3).astype(np.uint8)
        ext = ".gz" if compress else ""
        write_idx(os.path.join(root, f"{prefix}-images{sep}idx3-ubyte{ext}"), images, compress=compress)
        write_idx(os.path.join(root, f"{prefix}-labels{sep}idx1-ubyte{ext}"), labels, compress=compress)
        out[split] = (images, labels)
    return out


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), compress=st.booleans(), seed=st.integers(0, 99))
def test_read_idx_round_trips_uint8(tmp_path_factory, shape, compress, seed):
    array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    path = str(tmp_path_factory.mktemp("idx") / "a.idx")
    write_idx(path, array, compress=compress)
    out = data.read_idx(path)
    assert out.dtype == np.uint8 and out.shape == tuple(shape)
    np.testing.assert_array_equal(out, array)


def test_read_idx_big_endian_int32(tmp_path):
    array = np.array([[1, -2, 70000], [3, 2**30, -5]], np.int32)
    write_idx(tmp_path / "b", array, type_byte=0x0C)
    out = data.read_idx(str(tmp_path / "b"))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("mutate, message", [
    (lambda raw: raw[:-3], "header says shape"),  # truncated data
    (lambda raw: raw + b"\0", "header says shape"),  # trailing bytes
    (lambda raw: b"\x01\x02" + raw[2:], "not an idx file"),  # bad magic
    (lambda raw: raw[:6], "truncated inside its header"),
    (lambda raw: b"", "not an idx file"),
])
def test_read_idx_rejects_corrupt_files(tmp_path, mutate, message):
    raw = write_idx(tmp_path / "ok", np.zeros((4, 3, 3), np.uint8))
    (tmp_path / "bad").write_bytes(mutate(raw))
    with pytest.raises(data.DataError, match=message):
        data.read_idx(str(tmp_path / "bad"))


def test_read_idx_rejects_corrupt_gzip_and_missing_file(tmp_path):
    good = gzip.compress(b"\0\0\x08\x01" + struct.pack(">I", 100) + bytes(100))
    (tmp_path / "bad.gz").write_bytes(good[:len(good) // 2])
    with pytest.raises(data.DataError, match="corrupt"):
        data.read_idx(str(tmp_path / "bad.gz"))
    with pytest.raises(data.DataError, match="does not exist"):
        data.read_idx(str(tmp_path / "missing"))


@pytest.mark.parametrize("kwargs", [dict(compress=True), dict(compress=False), dict(sep="."),
                                    dict(names=("emnist-letters-train", "emnist-letters-test"))])
def test_load_idx_handmade(tmp_path, kwargs):
    made = make_idx_dir(str(tmp_path), **kwargs)
    for split in ("train", "test"):
        src = data.load_idx(str(tmp_path), split, image_size=6)
        images, labels = made[split]
        assert isinstance(src, data.ArraySource) and src.num_classes == 3 and src.image_shape == (6, 6, 1)
        np.testing.assert_array_equal(src.images[..., 0], images)
        np.testing.assert_array_equal(src.labels, labels.astype(np.int32))


def test_load_idx_resizes_and_converts(tmp_path):
    make_idx_dir(str(tmp_path))
    src = data_block.load_source(data_config(dataset="idx", data_dir=str(tmp_path), image_size=12, channels=3))
    assert src.image_shape == (12, 12, 3)
    np.testing.assert_array_equal(src.images[..., 0], src.images[..., 2])  # gray repeated into RGB


def test_idx_bad_folders(tmp_path):
    with pytest.raises(data.DataError, match="no file matching train-images"):
        data.load_idx(str(tmp_path), "train")  # empty folder
    make_idx_dir(str(tmp_path))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8), compress=True)
    with pytest.raises(data.DataError, match="labels for 12 images"):
        data.load_idx(str(tmp_path), "train")
    with pytest.raises(data.DataError, match="splits 'train' and 'test'"):
        data.load_idx(str(tmp_path), "validation")


# --- the real Fashion-MNIST from Debian's dataset-fashion-mnist ------------------------------------


@pytest.fixture(scope="module")
def fashion():
    assert os.path.isfile(os.path.join(FASHION, "train-images-idx3-ubyte.gz")), (
        f"Fashion-MNIST idx files missing from {FASHION}: `apt-get install dataset-fashion-mnist`")
    config = fashion_mnist.get_config()
    return {split: data_block.load_source(config.data, split) for split in ("train", "test")}


def test_real_fashion_mnist(fashion):
    for split, n in (("train", 60_000), ("test", 10_000)):
        src = fashion[split]
        assert len(src) == n and src.image_shape == (28, 28, 1) and src.num_classes == 10
        np.testing.assert_array_equal(np.bincount(src.labels, minlength=10), np.full(10, n // 10))
        assert src.images.dtype == np.uint8 and src.images.min() == 0 and src.images.max() == 255
        # real garments, not noise: neighbouring pixels are strongly correlated
        x = src.images[:500, :, :, 0].astype(np.float64)
        assert np.corrcoef(x[:, :, 1:].ravel(), x[:, :, :-1].ravel())[0, 1] > 0.8


def test_cli_info_reports_fashion_mnist(capsys):
    assert data_cli.main(["info", "--dataset", "idx", "--data_dir", FASHION, "--split", "test"]) == 0
    assert "10000 images of shape (28, 28, 1), 10 classes, per class [1000, 1000" in capsys.readouterr().out
    assert data_cli.main(["info", "--dataset", "idx", "--data_dir", "/nonexistent"]) == 1


def test_cli_info_defaults_are_the_configs_defaults():
    """The library never imports configs/, so the CLI keeps its own copy of the data defaults."""
    want = default.get_config().data.to_dict()
    assert data_cli.INFO_DEFAULTS == dict(want, download=False)  # info never downloads


# --- a folder of images -----------------------------------------------------------------------------


def save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_flat_crops_and_resizes(tmp_path):
    wide = np.zeros((4, 8, 3), np.uint8)
    wide[:, 2:6] = 200  # the central 4x4 square is uniform 200, the borders 0
    save(str(tmp_path / "a.png"), wide)
    save(str(tmp_path / "b.jpg"), np.full((16, 16, 3), 50, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    src = data_block.load_source(data_config(dataset="image_folder", data_dir=str(tmp_path), image_size=4))
    assert len(src) == 2 and src.num_classes == 0 and src.image_shape == (4, 4, 3)
    images, labels = src[np.arange(2)]
    np.testing.assert_array_equal(images[0], np.full((4, 4, 3), 200, np.uint8))  # centre crop, no resize
    assert abs(int(images[1].mean()) - 50) <= 2 and labels.tolist() == [0, 0]


def test_image_folder_classes_gray_and_lazy(tmp_path):
    for k, cls in enumerate(["cat", "dog"]):
        for i in range(3):
            save(str(tmp_path / cls / f"{i}.png"), np.full((10, 10), 40 * k + i, np.uint8))
    config = data_config(dataset="image_folder", data_dir=str(tmp_path), image_size=10, cache_max_mb=0)
    src = data_block.load_source(config)
    assert isinstance(src, data.LazySource) and src.image_shape == (10, 10, 1)
    assert src.num_classes == 2 and src.class_names == ("cat", "dog")
    images, labels = src[np.array([0, 4])]
    assert labels.tolist() == [0, 1] and images[0].max() == 0 and images[1].max() == 41
    cached = data_block.load_source(data_config(**{**config.to_dict(), "cache_max_mb": 1}))
    assert isinstance(cached, data.ArraySource)
    np.testing.assert_array_equal(cached.images, src[np.arange(len(src))][0])


def test_image_folder_bad_input(tmp_path):
    with pytest.raises(data.DataError, match="no images"):
        data.load_image_folder(str(tmp_path))
    save(str(tmp_path / "ok.png"), np.zeros((4, 4), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(data.DataError, match="broken.png is not a readable image"):
        data.load_image_folder(str(tmp_path))
    os.remove(tmp_path / "broken.png")
    save(str(tmp_path / "cls" / "x.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(data.DataError, match="mixes images"):
        data.load_image_folder(str(tmp_path))
    with pytest.raises(data.DataError, match="needs a sub-folder"):
        data.load_image_folder(str(tmp_path), "test")


# --- CIFAR python batches ---------------------------------------------------------------------------


def make_cifar(root, as_tar=False, hundred=False):
    """CIFAR-10 (or -100) "python version" files built the way the originals were: ``pickle.dump`` of
    dicts of bytes keys holding a uint8 array and lists of Python ints, protocol 2; optionally the
    ``.tar.gz`` they come in."""
    rng = np.random.default_rng(1)
    folder = os.path.join(root, "cifar-100-python" if hundred else "cifar-10-batches-py")
    os.makedirs(folder)
    classes, label_key = (100, b"fine_labels") if hundred else (10, b"labels")
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {}
    for name in names:
        batches[name] = {b"batch_label": name.encode(), label_key: rng.integers(0, classes, 4).tolist(),
                         b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"filenames": [f"{name}_{k}.png".encode() for k in range(4)]}
    meta_name, names_key = ("meta", b"fine_label_names") if hundred else ("batches.meta", b"label_names")
    batches[meta_name] = {names_key: [f"c{k}".encode() for k in range(classes)], b"num_cases_per_batch": 4}
    for name, content in batches.items():
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(content, f, protocol=2)
    if as_tar:
        tar_name = "cifar-100-python.tar.gz" if hundred else "cifar-10-python.tar.gz"
        with tarfile.open(os.path.join(root, tar_name), "w:gz") as tar:
            tar.add(folder, arcname=os.path.basename(folder))
        for name in batches:
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)
    return batches


@pytest.mark.parametrize("hundred", [False, True])
@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar_python(tmp_path, as_tar, hundred):
    batches = make_cifar(str(tmp_path), as_tar, hundred)
    src = data_block.load_source(data_config(dataset="cifar_python", data_dir=str(tmp_path), image_size=32), "test")
    test = batches["test" if hundred else "test_batch"]
    assert len(src) == 4 and src.num_classes == (100 if hundred else 10) and src.class_names[3] == "c3"
    assert list(src.labels) == test[b"fine_labels" if hundred else b"labels"]
    row = test[b"data"][2]  # 1024 red, 1024 green, 1024 blue, row-major 32x32
    np.testing.assert_array_equal(src.images[2, 1, 5], [row[32 + 5], row[1024 + 32 + 5], row[2048 + 32 + 5]])
    train = data_block.load_source(data_config(dataset="cifar_python", data_dir=str(tmp_path), image_size=64))
    assert len(train) == (4 if hundred else 20) and train.image_shape == (64, 64, 3)


@pytest.mark.parametrize("as_tar", [False, True])
def test_a_cifar_batch_that_would_run_code_is_refused_without_running_it(tmp_path, as_tar):
    """The README's old warning made real: a data_batch_1 whose pickle calls os.system is one line, and
    the command never runs (the file it would touch does not appear)."""
    sentinel = tmp_path / "ran"
    make_cifar(str(tmp_path / "data"), as_tar=False)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": RunsCode(sentinel), b"labels": [0]}, f, protocol=2)
    if as_tar:
        with tarfile.open(tmp_path / "data" / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
        shutil.rmtree(folder)
    with pytest.raises(data.DataError, match="refusing to unpickle 'posix.system'") as e:
        data.load_cifar_python(str(tmp_path / "data"))
    assert "\n" not in str(e.value) and "data_batch_1" in str(e.value) and not sentinel.exists()


def test_cifar_python_missing(tmp_path):
    with pytest.raises(data.DataError, match="no CIFAR python batches"):
        data.load_cifar_python(str(tmp_path))


# --- TFDS by name (tfds.testing.mock_data; never downloads) -----------------------------------------


def test_tfds_mock_mnist_and_cifar_64(tmp_path):
    with tfds.testing.mock_data(num_examples=24):
        src = data_block.load_source(data_config(dataset="mnist", image_size=28, data_dir=str(tmp_path)))
        assert len(src) == 24 and src.image_shape == (28, 28, 1) and src.num_classes == 10
        assert src.class_names[:2] == ("0", "1") and src.labels.max() < 10
        lazy = data_block.load_source(data_config(dataset="cifar10", image_size=64, data_dir=str(tmp_path),
                                            random_flip=True, cache_max_mb=0), "test")
        assert isinstance(lazy, data.LazySource) and lazy.image_shape == (64, 64, 3)
        images, labels = lazy[np.array([0, 5])]
        assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
        gray = data_block.load_source(data_config(dataset="cifar10", image_size=16, channels=1, data_dir=str(tmp_path)))
        assert gray.image_shape == (16, 16, 1)


def test_tfds_mock_variable_size_images_and_stream(tmp_path):
    with tfds.testing.mock_data(num_examples=16):  # oxford_flowers102: images of many shapes
        src = data_block.load_source(data_config(dataset="oxford_flowers102", image_size=8, data_dir=str(tmp_path)))
    assert src.image_shape == (8, 8, 3) and src.num_classes == 102
    batch = next(data.batch_stream(src, seed=0, start_step=0, batch_size=8))
    assert batch["image"].shape == (8, 8, 8, 3)


@pytest.fixture(scope="module")
def real_tfds_dir(tmp_path_factory):
    """A real (not mocked) ArrayRecord TFDS dataset 'jaxdiff_tiny': image i is unique, label i."""
    root = str(tmp_path_factory.mktemp("tfds"))
    rng = np.random.default_rng(5)
    splits = {"train": (rng.integers(0, 256, (24, 6, 10, 3), dtype=np.uint8), np.arange(24)),
              "test": (rng.integers(0, 256, (8, 6, 10, 3), dtype=np.uint8), np.arange(8))}
    write_tfds_dataset("jaxdiff_tiny", root, splits, num_classes=24)
    return root, splits


def test_tfds_real_array_record_by_name(real_tfds_dir):
    root, splits = real_tfds_dir
    config = data_config(dataset="jaxdiff_tiny", data_dir=root, image_size=6, cache_max_mb=0)
    for split in ("train", "test"):
        src = data_block.load_source(config, split)
        assert isinstance(src, data.LazySource) and len(src) == len(splits[split][1]) and src.num_classes == 24
        images, labels = src[np.arange(len(src))]
        assert sorted(labels.tolist()) == list(range(len(src)))  # every record once (TFDS shuffles on write)
        np.testing.assert_array_equal(images, splits[split][0][labels][:, :, 2:8])  # exact PNG round trip + crop
    with pytest.raises(data.DataError, match="cannot read split 'validation' .*available: train, test"):
        data_block.load_source(config, "validation")


def test_tfds_without_random_access_says_how_to_convert(real_tfds_dir, tmp_path):
    """A dataset prepared as TFRecord (its dataset_info says so) cannot be read by index: one DataError
    naming the format and the conversion command."""
    root = str(tmp_path / "tfds")
    shutil.copytree(real_tfds_dir[0], root)
    info_path = os.path.join(root, "jaxdiff_tiny", "1.0.0", "dataset_info.json")
    with open(info_path) as f:
        info = json.load(f)
    info["fileFormat"] = "tfrecord"
    with open(info_path, "w") as f:
        json.dump(info, f)
    config = data_config(dataset="jaxdiff_tiny", data_dir=root, image_size=6, cache_max_mb=0)
    with pytest.raises(data.DataError, match="is stored as tfrecord, which has no random access.*convert_format"):
        data_block.load_source(config)


def test_tfds_bad_names(tmp_path):
    with pytest.raises(data.DataError, match="did you mean 'mnist'"):
        data_block.load_source(data_config(dataset="mnsit", image_size=28))
    with pytest.raises(data.DataError, match="has no image feature 'image'.*not an image dataset"):
        data_block.check_source(data_config(dataset="imdb_reviews", image_size=28))


def test_tfds_not_prepared_offline(tmp_path, monkeypatch):
    config = data_config(dataset="mnist", image_size=28, data_dir=str(tmp_path), download=False)
    with pytest.raises(data.DataError, match="not prepared in .*python -m jaxdiff.data prepare mnist.*dataset=idx"):
        data_block.load_source(config)
    config.download = True
    monkeypatch.setattr(tfds_source, "_has_tensorflow", lambda: False)
    with pytest.raises(data.DataError, match="needs TensorFlow"):
        data_block.load_source(config)
    monkeypatch.setattr(tfds_source, "_has_tensorflow", lambda: True)
    monkeypatch.setattr(tfds_source, "_network_available", lambda: False)
    config.dataset = "fashion_mnist"
    with pytest.raises(data.DataError, match="no internet.*dataset-fashion-mnist"):
        data_block.load_source(config)


# --- config checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (dict(image_size=0), "image_size must be a positive integer"),
    (dict(channels=2), "data.channels must be 0"),
    (dict(random_flip=True), "random_flip=True on 'digits'"),
    (dict(dataset="mnist", random_flip=True, image_size=28), "random_flip=True on 'mnist'"),
    (dict(dataset="idx"), "set --config.data.data_dir"),
    (dict(dataset="image_folder", data_dir="/nonexistent/images"), "does not exist"),
    (dict(dataset=""), "data.dataset is empty"),
    (dict(num_workers=0), "num_workers must be a positive"),
])
def test_check_source_rejects(overrides, message):
    with pytest.raises(data.DataError, match=message):
        data_block.check_source(data_config(**overrides))


@pytest.mark.parametrize("module", [default, digits, mnist, cifar10, cifar10_64, fashion_mnist, fashion_mnist_cpu])
def test_shipped_configs_pass_the_data_check(module):
    data_block.check_source(module.get_config().data)


def test_cpu_recipes_are_valid_and_mnist_asks_for_its_folder(tmp_path):
    config_checks.validate(fashion_mnist_cpu.get_config())
    with pytest.raises(data.DataError, match="set --config.data.data_dir"):
        data_block.check_source(mnist_cpu.get_config().data)
    config = mnist_cpu.get_config()
    config.data.data_dir = str(tmp_path)
    config_checks.validate(config)


def test_load_source_takes_plain_arguments_and_the_old_block_form_warns(tmp_path):
    """The library's load_source takes a dataset name and keyword arguments (no config block); the old
    call form with a config.data block still works for one release, with a DeprecationWarning."""
    make_idx_dir(str(tmp_path))
    block = data_config(dataset="idx", data_dir=str(tmp_path), image_size=6)
    plain = data.load_source("idx", "test", data_dir=str(tmp_path), image_size=6)
    with pytest.warns(DeprecationWarning, match="load_source"):
        old = data.load_source(block, "test")
    driver = data_block.load_source(block, "test")
    for src in (old, driver):
        np.testing.assert_array_equal(src[np.arange(len(src))][0], plain[np.arange(len(plain))][0])
    with pytest.warns(DeprecationWarning), pytest.raises(data.DataError, match="random_flip=True on 'digits'"):
        data.load_source(data_config(random_flip=True))
    with pytest.raises(data.DataError, match="set --config.data.data_dir"):
        data.load_source("cifar_python", image_size=32)
    assert set(data.LOCAL_READERS) == set(data.LOCAL_DATASETS) and not data.LOCAL_READERS["digits"].needs_data_dir


def test_batch_larger_than_dataset():
    src = data.load_digits()
    with pytest.raises(data.DataError, match="larger than the dataset"):
        next(data.batch_stream(src, seed=0, start_step=0, batch_size=5000))


# --- order, resume, hosts ---------------------------------------------------------------------------


def tagged_source(n=50):
    """Image i is filled with i (mod 256) and its label is i: the stream's output names its indices."""
    images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, 2, 2, 1)).copy()
    return data.ArraySource(images, np.arange(n, dtype=np.int32), n, "tagged")


def take(stream, k):
    out = [next(stream)["label"] for _ in range(k)]
    stream.close()
    return out


def test_same_seed_same_order_different_seed_different_order():
    src = tagged_source()
    a = take(data.batch_stream(src, seed=3, start_step=0, batch_size=8, num_workers=3, prefetch=5), 13)
    b = take(data.batch_stream(src, seed=3, start_step=0, batch_size=8, num_workers=1, prefetch=1), 13)
    c = take(data.batch_stream(src, seed=4, start_step=0, batch_size=8), 13)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # an epoch (50 // 8 = 6 batches) visits 48 distinct examples; the next epoch reshuffles
    epoch0, epoch1 = np.concatenate(a[:6]), np.concatenate(a[6:12])
    assert len(set(epoch0.tolist())) == 48 and len(set(epoch1.tolist())) == 48
    assert not np.array_equal(np.sort(epoch0), np.arange(48))  # a shuffle, not the identity
    np.testing.assert_array_equal(np.concatenate(a[:6]), np.concatenate(
        [data.local_batch_indices(3, s, 8, 50) for s in range(6)]))


def test_interrupted_and_resumed_stream_continues_exactly():
    src = tagged_source()
    full = take(data.batch_stream(src, seed=1, start_step=0, batch_size=8, prefetch=3), 15)
    first = take(data.batch_stream(src, seed=1, start_step=0, batch_size=8, prefetch=3), 5)
    rest = take(data.batch_stream(src, seed=1, start_step=5, batch_size=8, prefetch=3), 10)  # crosses epochs
    for x, y in zip(full, first + rest):
        np.testing.assert_array_equal(x, y)


def test_two_hosts_read_disjoint_halves_that_cover_the_data():
    src = tagged_source(48)
    hosts = [take(data.batch_stream(src, seed=7, start_step=0, batch_size=8, process_index=p, process_count=2), 6)
             for p in range(2)]
    for step in range(6):
        h0, h1 = hosts[0][step], hosts[1][step]
        assert len(h0) == len(h1) == 4 and not set(h0) & set(h1)
        np.testing.assert_array_equal(np.sort(np.concatenate([h0, h1])), np.sort(data.batch_indices(7, step, 8, 48)))
    np.testing.assert_array_equal(np.sort(np.concatenate(hosts[0] + hosts[1])), np.arange(48))
    with pytest.raises(data.DataError, match="does not divide over 3"):
        next(data.batch_stream(src, seed=0, start_step=0, batch_size=8, process_count=3))


def test_stream_images_match_labels():
    src = tagged_source()
    batch = next(data.batch_stream(src, seed=0, start_step=2, batch_size=8))
    np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], batch["label"] % 256)


def test_reader_errors_reach_the_consumer(tmp_path):
    for i in range(4):
        save(str(tmp_path / f"{i}.png"), np.zeros((4, 4), np.uint8))
    src = data_block.load_source(data_config(dataset="image_folder", data_dir=str(tmp_path), image_size=4,
                                             cache_max_mb=0))
    (tmp_path / "2.png").write_bytes((tmp_path / "2.png").read_bytes()[:40])  # truncated after the check
    with pytest.raises(data.DataError, match="2.png cannot be decoded"):
        take(data.batch_stream(src, seed=0, start_step=0, batch_size=4), 1)


# --- on-device preprocessing ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preprocess_jit():
    return jax.jit(data.preprocess, static_argnums=2)


def test_preprocess_scales_exactly(preprocess_jit):
    images = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    out = np.asarray(preprocess_jit(images, jax.random.PRNGKey(0), False))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, images.astype(np.float64) / 127.5 - 1.0, atol=1e-6)
    assert out.min() == -1.0 and out.max() == 1.0


def test_preprocess_flips_a_bernoulli_half(preprocess_jit):
    n = 4096
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 4, 5, 3), dtype=np.uint8)
    key = jax.random.PRNGKey(11)
    out = np.asarray(preprocess_jit(images, key, True))
    plain = images.astype(np.float64) / 127.5 - 1.0
    same = np.all(np.abs(out - plain) < 1e-6, axis=(1, 2, 3))
    mirrored = np.all(np.abs(out - plain[:, :, ::-1]) < 1e-6, axis=(1, 2, 3))
    assert np.all(same ^ mirrored)  # every image is either untouched or mirrored left-right, never both
    np.testing.assert_array_equal(mirrored, np.asarray(jax.random.bernoulli(key, 0.5, (n,))))
    assert abs(mirrored.mean() - 0.5) < 0.05  # 6 standard deviations of Binomial(4096, 1/2) / 4096
    other = np.asarray(preprocess_jit(images, jax.random.PRNGKey(12), True))
    assert not np.array_equal(out, other)  # the flip pattern follows the key
