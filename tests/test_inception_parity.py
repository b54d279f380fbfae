"""jaxdiff's FID InceptionV3 against pytorch-fid's own module, block by block.

The default tests need no PyTorch: they regenerate the random weights and images the fixture was
recorded from (``tests/inception_reference.py``), run jaxdiff, and compare with what pytorch-fid
computed (``tests/fixtures/inception_pytorch_fid.npz``, made by
``python -m tests.fixtures.make_inception_fixture``). The live test runs pytorch-fid itself, on
other weights and images, where torch, torchvision and pytorch-fid are installed.

Tolerance: every compared value of a block may differ from pytorch-fid's by at most
``TOLERANCE = 1e-4`` times the root-mean-square of that block's output. Both sides compute in
float32 (unit round-off 6e-8) but sum the convolutions in different orders (XLA against oneDNN);
over fan-ins of up to 2,048 and some 40 layers in a row the differences grow to about 1e-5 of the
block's scale by the last blocks (measured: 6e-7 at the input, 9e-6 at Mixed_7c for the recorded
values; up to 2e-5 for the maximum over whole maps in the live test), and 1e-4 leaves room for
other CPUs and thread counts. A real difference is far above it: counting the padding in the
average pools gives 8e-2 at Mixed_5b and up to 1.4 later; an anti-aliased resize moves the
downsampled image's input by 0.24.
"""

import hashlib
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.evaluation import inception
from tests import inception_reference as ref

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def recorded():
    with np.load(ref.FIXTURE) as z:
        return {k: z[k] for k in z.files}


def jaxdiff_outputs(state_dict: dict, groups: list) -> dict:
    """``{"input": ..., block: ..., "pool3": ...}`` from jaxdiff for the uint8 image ``groups``:
    each group resized and normalised by :func:`inception.preprocess`, then all of them through the
    network at once (one compile of the 299x299 network)."""
    variables = inception.variables_from_state_dict(state_dict)
    x = jnp.concatenate([jax.jit(inception.preprocess)(g) for g in groups])
    return {"input": x, **inception.make_block_fn(variables)(x)}


def test_fixture_inputs_regenerate(recorded):
    """The weights and images drawn now are those the fixture was recorded from."""
    state_dict = ref.random_state_dict()
    assert len(state_dict) == 94 * 6 + 2  # 470 arrays jaxdiff loads, 94 num_batches_tracked, fc.weight, fc.bias
    again = "NumPy draws other numbers than when the fixture was made: rerun tests/fixtures/make_inception_fixture.py"
    assert ref.digest(state_dict[k] for k in sorted(state_dict)) == str(recorded["weights_sha256"]), again
    assert ref.digest(ref.reference_images()) == str(recorded["images_sha256"]), again


@pytest.mark.compat
def test_blocks_match_pytorch_fid_recorded(recorded):
    outputs = jaxdiff_outputs(ref.random_state_dict(), ref.reference_images())
    assert set(outputs) == set(ref.BLOCKS) | {"pool3"}
    ours = ref.summarise(outputs)
    errors = ref.relative_errors(ours, recorded)
    print("max |jaxdiff - pytorch-fid| / rms per block:", {k: f"{e:.1e}" for k, e in errors.items()})
    assert max(errors.values()) <= TOLERANCE, errors
    # the comparison is not trivial: every block's values differ between images far beyond the tolerance
    for block in ref.BLOCKS:
        spread = recorded[f"{block}/samples"].std(axis=0).mean() / recorded[f"{block}/rms"]
        assert spread > 100 * TOLERANCE, (block, spread)
    pool3 = np.asarray(outputs["pool3"])
    assert pool3.shape == (4, inception.FEATURE_DIM)
    scale = np.sqrt(np.mean(recorded["pool3"].astype(np.float64) ** 2))
    np.testing.assert_allclose(pool3, recorded["pool3"], rtol=0, atol=TOLERANCE * scale)


def test_feature_fn_matches_pytorch_fid_pool3(recorded):
    """The function evaluation runs (uint8 images in, pool3 out) on the two 32x32 images."""
    features = inception.make_feature_fn(inception.variables_from_state_dict(ref.random_state_dict()))
    first = ref.reference_images()[0]
    scale = np.sqrt(np.mean(recorded["pool3"].astype(np.float64) ** 2))
    np.testing.assert_allclose(np.asarray(features(first)), recorded["pool3"][:len(first)], rtol=0,
                               atol=TOLERANCE * scale)


def test_live_against_pytorch_fid(tmp_path):
    """pytorch-fid's module itself on fresh random weights and images: every block's whole output,
    and its state dict saved by ``torch.save`` (both formats) read by :func:`inception.load_weights`."""
    torch = pytest.importorskip("torch")
    for name in ("torchvision", "pytorch_fid"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed")
    from tests.fixtures import make_inception_fixture as pytorch_side

    torch.set_num_threads(2)
    state_dict = ref.random_state_dict(ref.WEIGHT_SEED + 1)
    groups = ref.reference_images(ref.IMAGE_SEED + 1)
    model = pytorch_side.pytorch_fid_module(state_dict)
    theirs = pytorch_side.block_outputs(model, groups)
    ours = jaxdiff_outputs(state_dict, groups)
    errors = {}
    for name in ref.BLOCKS + ("pool3",):
        scale = np.sqrt(np.mean(theirs[name].astype(np.float64) ** 2))
        error = np.abs(np.asarray(ours[name]) - theirs[name]).max() / scale
        errors[name] = error
    print("live max |jaxdiff - pytorch-fid| / rms per block:", {k: f"{e:.1e}" for k, e in errors.items()})
    assert max(errors.values()) <= TOLERANCE, errors

    expected = inception.variables_from_state_dict(state_dict)
    for legacy in (False, True):
        path = tmp_path / f"pt_inception{'_legacy' if legacy else ''}.pth"
        # what pytorch-fid's released file holds: the state dict of fid_inception_v3()'s module
        torch.save(pytorch_side.fid_inception_v3(state_dict).state_dict(), path,
                   _use_new_zipfile_serialization=not legacy)
        loaded = inception.load_weights(str(path))
        jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, expected)
        provenance = inception.weights_provenance(str(path))
        assert provenance == {"inception_weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                              "inception_weights_verified": False}
