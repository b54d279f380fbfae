"""Every reader of a file a user gives, fuzzed (docs/files.md lists them): files derived from a valid one
by truncation, bit flips, extreme values written over header bytes and over the numbers of a text
header (sizes, dims, offsets, dtypes), and a wrong magic number. Each case must load or raise the
reader's own one-line error; none may run code (a sentinel file must not appear), allocate more than a
bound proportional to the file's size (tracemalloc's peak), or take more than a second (timed around
the read). The pickle readers refuse every global outside their table without importing it."""

import io
import json
import os
import pickle
import re
import string
import sys
import tarfile
import time
import tracemalloc
import zipfile
from typing import Callable, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from jaxdiff.common import array_files, restricted_pickle, torch_pickle
from jaxdiff.data import DataError, cifar_python, image_files, readers
from jaxdiff.evaluation import inception
from jaxdiff.interop import diffusers_unet, process_file, safetensors_file
from jaxdiff.interop.safetensors_file import WeightsError
from tests.conftest import ROOT

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
EXTREMES = (0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1)
TEXT_EXTREMES = ("0", "-1", "4294967295", "9223372036854775807", "18446744073709551616", "1e308", "99999999999")
SLACK = 4 << 20  # bytes of Python allocations any read may make (PIL's plugin tables, zipfile's structures, ...)


def _valid_idx() -> bytes:
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    return b"\x00\x00\x08\x03" + np.array(images.shape, ">u4").tobytes() + images.tobytes()


def _valid_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buf, format="PNG")
    return buf.getvalue()


def _valid_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1))
    return buf.getvalue()


def _valid_npz() -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.arange(32, dtype=np.uint8).reshape(2, 4, 4, 1), mu=np.ones(3))
    return buf.getvalue()


def _valid_cifar_batch() -> bytes:
    return pickle.dumps({b"batch_label": b"b", b"labels": [1, 2],
                         b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251}, protocol=2)


def _valid_process_file() -> bytes:
    diffusion = {"family": "edm", "target": "edm", "num_timesteps": 1000, "schedule": "linear", "beta_start": 1e-4,
                 "beta_end": 0.02, "scale_betas_to_t": False, "zero_terminal_snr": False,
                 "edm": {"sigma_data": 0.5, "p_mean": -1.2, "p_std": 1.2, "sigma_min": 0.002, "sigma_max": 80.0,
                         "rho": 7.0},
                 "flow": {"t_sampling": "logit_normal", "loc": 0.0, "scale": 1.0, "shift": 1.0}}
    return json.dumps({"format": 1, "diffusion": diffusion}).encode()


def _read_png(path):
    """``image_mode`` then ``read_image``, as the image folder reads a file, with PIL's decompression-bomb
    limit at 64 x 64 pixels: a few bytes of PNG may describe a huge image, and that limit (not the file's
    size) is what bounds its memory."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 64 * 64
    try:
        return image_files.image_mode(str(path)), image_files.read_image(str(path), 3)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _read_file(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def _cifar_folder(tmp, batch: bytes):
    """A cifar-10-batches-py folder whose data_batch_1 is ``batch`` (the others valid)."""
    folder = tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(2, 6)] + ["test_batch"]:
        (folder / name).write_bytes(_valid_cifar_batch())
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % k for k in range(10)]}, 2))
    (folder / "data_batch_1").write_bytes(batch)
    return tmp / "cifar"


def _cifar_tar(tmp, data: bytes):
    (tmp / "tar").mkdir(exist_ok=True)
    (tmp / "tar" / "cifar-10-python.tar.gz").write_bytes(data)
    return tmp / "tar"


def _valid_cifar_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            content = (pickle.dumps({b"label_names": [b"c%d" % k for k in range(10)]}, 2) if name == "batches.meta"
                       else _valid_cifar_batch())
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _process_folder(tmp, data: bytes):
    (tmp / "export").mkdir(exist_ok=True)
    (tmp / "export" / "jaxdiff.json").write_bytes(data)
    return tmp / "export"


def _write(tmp, name, data):
    (tmp / name).write_bytes(data)
    return tmp / name


class Reader(NamedTuple):
    """How to fuzz one reader: ``valid()`` bytes, ``read(tmp, data)`` (``data`` written where the reader
    looks), its one-line ``errors``, the allocation ``factor`` (of the bytes read: ``data`` plus
    ``other_bytes``, the valid files read beside it) and whether it has a ``text_header`` (JSON,
    ``.npy``)."""

    valid: Callable[[], bytes]
    read: Callable
    errors: type | tuple
    factor: int = 64
    text_header: bool = False
    other_bytes: int = 0
    loads: bool = True  # whether the valid file loads (a few arrays are not the Inception network's)


READERS = {
    "idx": Reader(_valid_idx, lambda tmp, d: readers.read_idx(str(_write(tmp, "x-idx3-ubyte", d))), DataError),
    "image": Reader(_valid_png, lambda tmp, d: _read_png(_write(tmp, "a.png", d)), DataError),
    "cifar batch": Reader(_valid_cifar_batch, lambda tmp, d: cifar_python.load_cifar_python(str(_cifar_folder(tmp, d))),
                          DataError, other_bytes=5 * len(_valid_cifar_batch()) + 200),
    "cifar tar.gz": Reader(_valid_cifar_tar, lambda tmp, d: cifar_python.load_cifar_python(str(_cifar_tar(tmp, d))),
                           DataError, factor=1100),
    "npy (edit input, mask)": Reader(_valid_npy, lambda tmp, d: array_files.npy_from_bytes(d, "x.npy"),
                                     array_files.ArrayFileError, text_header=True),
    "npz (edit input, eval cache)": Reader(_valid_npz, lambda tmp, d: array_files.npz_from_bytes(d, "x.npz"),
                                           array_files.ArrayFileError, factor=1100, text_header=True),
    "safetensors": Reader(lambda: _read_file("diffusers/ddpm/diffusion_pytorch_model.safetensors"),
                          lambda tmp, d: safetensors_file.read(_write(tmp, "w.safetensors", d)), WeightsError,
                          text_header=True),
    "torch zip": Reader(lambda: _read_file("torch_pickle_state.pth"),
                        lambda tmp, d: torch_pickle.load(_write(tmp, "w.pth", d)), torch_pickle.TorchPickleError),
    "torch legacy": Reader(lambda: _read_file("torch_pickle_state_legacy.pth"),
                           lambda tmp, d: torch_pickle.load(_write(tmp, "w.pth", d)), torch_pickle.TorchPickleError),
    "diffusers config.json": Reader(lambda: _read_file("diffusers/ddpm/config.json"),
                                    lambda tmp, d: diffusers_unet.unet_from_diffusers_config(diffusers_unet.read_json(
                                        str(_write(tmp, "config.json", d))), "config.json"),
                                    WeightsError, text_header=True),
    "jaxdiff.json": Reader(_valid_process_file, lambda tmp, d: process_file.read(str(_process_folder(tmp, d))),
                           WeightsError, text_header=True),
    "inception weights (.npz)": Reader(lambda: _read_file("torch_pickle_state.npz"),
                                       lambda tmp, d: inception.load_weights(str(_write(tmp, "w.npz", d))),
                                       inception.InceptionWeightsError, factor=1100, text_header=True, loads=False),
}


@st.composite
def damaged(draw, data: bytes, text_header: bool):
    """``data`` truncated, with bits flipped, with an extreme integer over header bytes (magic numbers
    included), or (text headers) with an extreme number in place of one of the header's numbers."""
    kinds = ["truncate", "flip", "field"] + (["number"] if text_header else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    if kind == "flip":
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            out[position] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if kind == "field":
        width = draw(st.sampled_from([1, 2, 4, 8]))
        offset = draw(st.integers(0, max(0, min(len(data), 128) - width)))
        value = draw(st.sampled_from(EXTREMES)) % (1 << (8 * width))
        out[offset:offset + width] = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
        return bytes(out)
    header = data[:512]
    numbers = list(re.finditer(rb"\d+", header))
    if not numbers:
        return data
    m = draw(st.sampled_from(numbers))
    return data[:m.start()] + draw(st.sampled_from(TEXT_EXTREMES)).encode() + data[m.end():]


def check_read(reader: Reader, tmp, data: bytes):
    """``reader`` on ``data`` loads or raises one of its errors on one line, runs no code (no sentinel
    file appears) and allocates at most its factor times the bytes it reads (plus :data:`SLACK`)."""
    sentinel = tmp / "sentinel"
    tracemalloc.start()
    start = time.perf_counter()
    try:
        reader.read(tmp, data)
    except reader.errors as e:
        assert "\n" not in str(e) and len(str(e)) < 1000, str(e)
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert seconds < 1.0, seconds
    assert peak <= reader.factor * (len(data) + reader.other_bytes) + SLACK, (peak, len(data))
    assert not sentinel.exists()


@pytest.mark.parametrize("name", sorted(READERS))
def test_every_reader_loads_or_refuses_damaged_files_in_one_line(name, tmp_path_factory):
    reader = READERS[name]
    valid = reader.valid()
    tmp = tmp_path_factory.mktemp("fuzz")
    try:  # the valid file loads (and the reader's imports are done before anything is measured)
        reader.read(tmp, valid)
    except reader.errors:
        assert not reader.loads

    # (the second is measured in check_read: hypothesis' own deadline machinery allocates while it times)
    @settings(max_examples=100, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(damaged(valid, reader.text_header))
    def case(data):
        check_read(reader, tmp, data)

    case()


# ----------------------------------------------------------------------------- pickles: globals refused

DANGEROUS = [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "exec"),
             ("builtins", "getattr"), ("builtins", "__import__"), ("subprocess", "Popen"), ("shutil", "rmtree"),
             ("numpy", "load"), ("numpy", "frombuffer"), ("numpy.core.multiarray", "scalar"), ("torch", "load"),
             ("pickle", "loads"), ("codecs", "decode"), ("_codecs", "decode"), ("runpy", "run_path")]
identifiers = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)


def _global_pickle(module: str, name: str) -> bytes:
    """A protocol-2 pickle that calls ``module.name()`` (GLOBAL, an empty tuple, REDUCE)."""
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R."


@settings(max_examples=60, deadline=1000, derandomize=True, database=None)
@given(st.one_of(st.sampled_from(DANGEROUS), st.tuples(identifiers.map(lambda s: "jaxdiff_fuzz_" + s), identifiers)))
def test_the_pickle_readers_refuse_every_other_global_without_importing_it(module_name):
    module, name = module_name
    before = set(sys.modules)
    for allowed, error in ((restricted_pickle.NUMPY_ARRAYS, DataError),
                           (torch_pickle.ALLOWED_GLOBALS, torch_pickle.TorchPickleError)):
        with pytest.raises(error, match=re.escape(f"refusing to unpickle '{module}.{name}'")):
            restricted_pickle.load(_global_pickle(module, name), allowed, error, "test")
    assert set(sys.modules) == before  # refused by name, before any import


def test_the_numpy_stand_ins_refuse_what_would_allocate_or_hold_objects():
    """What the CIFAR table allows cannot allocate beyond the file: ndarray is not callable,
    _reconstruct starts empty, dtype is plain; nor can the unpickler itself (BYTEARRAY8 is refused)."""
    cases = {
        b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x40\x85\x85R.": "not callable",
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x40\x85U\x01b\x87R.":
            "a pickled array starts empty",
        pickle.dumps(np.zeros(2, object), protocol=2): "holds Python objects",
        b"\x80\x05\x96" + (1 << 40).to_bytes(8, "little") + b".": "BYTEARRAY8",  # 1 TiB stated, 0 held
    }
    for data, message in cases.items():
        with pytest.raises(DataError, match=message):
            restricted_pickle.load(data, restricted_pickle.NUMPY_ARRAYS, DataError, "test", encoding="bytes")


# ----------------------------------------------------------------------------- image folders


def test_image_folder_bombs_foreign_files_and_links_are_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4,096: past the limit (and twice it)
    with pytest.raises(DataError, match="decompression-bomb limit") as e:
        image_files.load_image_folder(str(folder), image_size=8)
    assert "\n" not in str(e.value) and "big.png" in str(e.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # between the limit and twice it: PIL only warns
    with pytest.raises(DataError, match="decompression-bomb limit"):
        image_files.load_image_folder(str(folder), image_size=8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="decompression-bomb limit"):  # edit inputs and masks: the same check
        image_files.read_image(str(folder / "big.png"), 1)
    monkeypatch.undo()
    (folder / "big.png").unlink()
    (folder / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="notes.png is not a readable image") as e:
        image_files.load_image_folder(str(folder), image_size=8)
    assert "\n" not in str(e.value)
    (folder / "notes.png").unlink()
    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(outside)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "ok.png")
    (folder / "link.png").symlink_to(outside)
    with pytest.raises(DataError, match="link.png links to .*secret.png, outside data.data_dir"):
        image_files.load_image_folder(str(folder), image_size=8)
    (folder / "link.png").unlink()
    (folder / "inner.png").symlink_to(folder / "ok.png")  # a link inside the folder is read
    assert len(image_files.load_image_folder(str(folder), image_size=8)) == 2


def test_a_zip_member_that_inflates_too_far_is_refused_unread(tmp_path, monkeypatch):
    """torch.save stores its members: one that deflates 4 MiB of zeros is refused before it is
    inflated; an .npz member is allowed deflate's own ratio (here lowered to 2 to see the check)."""
    with zipfile.ZipFile(tmp_path / "w.pth", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00." + b"\x00" * (4 << 20))
    with pytest.raises(torch_pickle.TorchPickleError, match="inflates .* not a torch.save file"):
        torch_pickle.load(tmp_path / "w.pth")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", b"\x00" * (1 << 20))
    monkeypatch.setattr(array_files, "MAX_INFLATION", 2)
    with pytest.raises(array_files.ArrayFileError, match="x.npz: member images.npy claims to inflate"):
        array_files.npz_from_bytes(buf.getvalue(), "x.npz")
