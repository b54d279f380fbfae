"""``jaxdiff.common.torch_pickle``: ``torch.save`` files read without PyTorch, exactly, and damaged or
foreign files refused on one line. The ``.pth`` fixtures were written by PyTorch
(``python -m tests.fixtures.make_torch_pickle_fixture``); nothing here imports torch."""

import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from jaxdiff.common import torch_pickle
from jaxdiff.evaluation import inception
from tests.conftest import ROOT, RunsCode

pytestmark = pytest.mark.compat  # what differs between JAX versions: run on the oldest pinned stack too

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
ZIP_FILE = os.path.join(FIXTURES, "torch_pickle_state.pth")
LEGACY_FILE = os.path.join(FIXTURES, "torch_pickle_state_legacy.pth")


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(FIXTURES, "torch_pickle_state.npz")) as z:
        return {k: z[k] for k in z.files}


def one_line_error(path, match: str, load=torch_pickle.load_state_dict):
    with pytest.raises(torch_pickle.TorchPickleError, match=match) as e:
        load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("path", [ZIP_FILE, LEGACY_FILE], ids=["zip", "legacy"])
def test_reads_both_formats_exactly(path, expected):
    assert torch_pickle.is_torch_file(path)
    state = torch_pickle.load_state_dict(path)
    assert list(state) == list(expected)  # the state dict's order, BatchNorm keys first
    for key, want in expected.items():
        got = state[key]
        assert got.dtype == want.dtype and got.shape == want.shape, key
        np.testing.assert_array_equal(got, want, err_msg=key)
        assert got.flags.c_contiguous and got.flags.writeable, key
    assert state["float16"].dtype == np.float16 and state["int64_view"].dtype == np.int64
    assert state["bfloat16"].dtype == np.float32  # widened: NumPy has no bfloat16
    np.testing.assert_array_equal(state["int64_view"], np.arange(5, 12))
    np.testing.assert_array_equal(state["int64_strided"], np.arange(1, 20, 3))
    np.testing.assert_array_equal(state["window"], state["transposed"].T[1:, 2:5])  # one storage, two views
    assert state["scalar"].shape == () and state["empty"].shape == (0, 4)


def test_an_npz_is_not_a_torch_file(tmp_path):
    np.savez(tmp_path / "w.npz", a=np.zeros(3))
    assert not torch_pickle.is_torch_file(tmp_path / "w.npz")
    one_line_error(tmp_path / "w.npz", "without exactly one <archive>/data.pkl")


@pytest.mark.parametrize("path", [ZIP_FILE, LEGACY_FILE], ids=["zip", "legacy"])
@pytest.mark.parametrize("keep", [0.98, 0.7, 0.3, 0.05])
def test_truncated_files_are_one_line_errors(tmp_path, path, keep):
    data = open(path, "rb").read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:int(len(data) * keep)])
    assert torch_pickle.is_torch_file(cut)
    one_line_error(cut, "truncated|cut off|Ran out of input|pickle data was truncated")


@pytest.mark.parametrize("path", [ZIP_FILE, LEGACY_FILE], ids=["zip", "legacy"])
def test_damaged_bytes_are_one_line_errors_or_read(tmp_path, path):
    """Any single damaged byte gives either the arrays (bytes nobody reads: padding, timestamps) or a
    one-line TorchPickleError, never another exception."""
    data = open(path, "rb").read()
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.pth"
    refused = 0
    for position in rng.choice(len(data), 150, replace=False):
        damaged = bytearray(data)
        damaged[position] ^= 1 << int(rng.integers(8))
        bad.write_bytes(bytes(damaged))
        try:
            torch_pickle.load_state_dict(bad)
        except torch_pickle.TorchPickleError as e:
            assert "\n" not in str(e)
            refused += 1
    assert refused > 0


def _zip_archive(path, data_pkl: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/version", "3\n")


def test_refuses_other_globals_without_running_them(tmp_path):
    marker = tmp_path / "ran"
    _zip_archive(tmp_path / "evil.pth", pickle.dumps({"w": RunsCode(marker)}, protocol=2))
    message = one_line_error(tmp_path / "evil.pth", "refusing to unpickle '(posix|nt).system'")
    assert "state dict" in message and not marker.exists()
    # a whole module saved with torch.save(model): its class is refused the same way
    _zip_archive(tmp_path / "module.pth", b"\x80\x02ctorch.nn.modules.linear\nLinear\nq\x00)\x81q\x01.")
    one_line_error(tmp_path / "module.pth", "refusing to unpickle 'torch.nn.modules.linear.Linear'")


def test_not_a_state_dict_and_not_a_torch_file(tmp_path):
    _zip_archive(tmp_path / "list.pth", pickle.dumps([1, 2], protocol=2))
    assert torch_pickle.load(tmp_path / "list.pth") == [1, 2]
    one_line_error(tmp_path / "list.pth", "holds a list, not a state dict")
    _zip_archive(tmp_path / "ints.pth", pickle.dumps({"a": 1}, protocol=2))
    one_line_error(tmp_path / "ints.pth", "entry 'a' is a int, not a tensor")
    (tmp_path / "empty.pth").write_bytes(b"")
    one_line_error(tmp_path / "empty.pth", r"neither a zip archive nor a legacy torch.save file \(empty\)")
    (tmp_path / "text.pth").write_bytes(b"<html>404</html>")
    assert not torch_pickle.is_torch_file(tmp_path / "text.pth")
    one_line_error(tmp_path / "text.pth", "neither a zip archive nor a legacy")
    with tarfile.open(tmp_path / "old.pth", "w") as t:
        info = tarfile.TarInfo("pickle")
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    one_line_error(tmp_path / "old.pth", "pre-0.4 PyTorch tar file.*save it again")
    one_line_error(tmp_path / "missing.pth", "FileNotFoundError")


def test_inception_load_weights_reads_pth_files(tmp_path):
    """load_weights tells a .pth from an .npz by content, and checks its keys like an .npz's."""
    with pytest.raises(inception.InceptionWeightsError, match="lack 'Conv2d_1a_3x3.bn.running_mean'") as e:
        inception.load_weights(ZIP_FILE)
    assert "\n" not in str(e.value) and "pt_inception-2015-12-05" in str(e.value)
    cut = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    cut.write_bytes(open(LEGACY_FILE, "rb").read()[:1000])
    with pytest.raises(inception.InceptionWeightsError, match="cannot read Inception weights.*truncated") as e:
        inception.load_weights(str(cut))
    assert "\n" not in str(e.value)
