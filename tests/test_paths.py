"""Work directories given as URLs (``gs://bucket/run``) go through ``etils.epath`` untouched: the
checks, metrics, pictures, sample arrays and evaluation caches land in the object store, and only
process 0 writes shared files. The store is fsspec's in-memory filesystem registered for ``gs``."""

import json

import fsspec
import jax
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from jaxdiff.common import paths, plotting
from jaxdiff.drivers import config_checks, sample_mode, train_loop
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.evaluation import features
from jaxdiff.training import checkpoint
from tests.conftest import tiny_config


class FakeGCS(MemoryFileSystem):
    """An in-memory bucket store answering for ``gs://`` (what gcsfs would do against Cloud Storage)."""

    protocol = ("gs", "gcs")
    root_marker = ""

    def __init__(self, *args, finalize_on_close=None, **kwargs):
        super().__init__(*args, **kwargs)


@pytest.fixture
def bucket(monkeypatch):
    fsspec.register_implementation("gs", FakeGCS, clobber=True)
    fsspec.register_implementation("gcs", FakeGCS, clobber=True)
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs.clear()
    monkeypatch.setenv("EPATH_USE_TF", "false")  # epath's fsspec backend, as without TensorFlow
    yield fsspec.filesystem("gs")
    FakeGCS.store.clear()


def test_url_workdir_is_checked_in_the_store_and_stays_a_url(bucket, tmp_path):
    path = config_checks.check_workdir("gs://bucket/run")
    assert str(path) == "gs://bucket/run" and paths.is_url(path)
    assert str(checkpoint.checkpoint_dir("gs://bucket/run")) == "gs://bucket/run/checkpoints"
    assert not list(path.iterdir())  # the write probe was removed again
    assert not (tmp_path / "gs:").exists()  # and nothing went to a local folder called gs:
    local = config_checks.check_workdir(str(tmp_path / "x" / ".." / "y"))
    assert str(local) == str(tmp_path / "y")  # local paths are made absolute


def test_metrics_pictures_and_arrays_land_in_the_store(bucket):
    run = paths.as_path("gs://bucket/run")
    for step in (5, 10, 15):
        paths.append_text(run / "metrics.jsonl", json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
    train_loop.truncate_metrics(run / "metrics.jsonl", 10)
    assert [r["step"] for r in plotting.read_metrics(run / "metrics.jsonl")] == [5, 10]
    plotting.save_loss_curve(run / "metrics.jsonl", run / "loss.png")
    plotting.save_image_grid(np.zeros((4, 8, 8, 1)), run / "grid.png")
    paths.save_npz(run / "eval" / "a.npz", compressed=True, images=np.arange(6, dtype=np.uint8))
    np.testing.assert_array_equal(paths.load_npz(run / "eval" / "a.npz")["images"], np.arange(6))
    assert bucket.cat("gs://bucket/run/loss.png")[:4] == b"\x89PNG"
    assert bucket.cat("gs://bucket/run/grid.png")[:4] == b"\x89PNG"
    assert not bucket.exists("gs://bucket/run/.grid.png.tmp")


def test_reference_statistics_cache_in_the_store(bucket):
    extractor = features.FeatureExtractor("mean", 2, lambda x: np.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1),
                                          "f00d", False, {})
    images = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 1)).astype(np.uint8)
    ref = features.reference_statistics(extractor, images, "gs://bucket/run/eval/ref.npz", 16, log=lambda *_: None)
    assert ref.path == "gs://bucket/run/eval/ref.npz" and bucket.exists(ref.path)
    messages = []
    again = features.reference_statistics(extractor, images, ref.path, 16, log=messages.append)
    assert "from gs://bucket/run/eval/ref.npz" in messages[0]
    np.testing.assert_array_equal(again.stats.sigma, ref.stats.sigma)


def test_only_process_zero_writes_shared_files(bucket, monkeypatch):
    config = tiny_config(**{"sampling.num_samples": 4, "diffusion.num_timesteps": 10})
    experiment = Experiment(config, channels=1, num_classes=0)
    state = experiment.init()
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    sample_mode.write_training_samples(experiment, state, "gs://bucket/run", 3)
    assert not bucket.exists("gs://bucket/run/samples_0000003.png")
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    sample_mode.write_training_samples(experiment, state, "gs://bucket/run", 3)
    assert bucket.cat("gs://bucket/run/samples_0000003.png")[:4] == b"\x89PNG"
