"""FID / KID maths against SciPy and float64 references, the digits classifier, the FID
InceptionV3 (random weights of the right shapes), reference-statistics caching, conditional
accuracy, and the bad-input errors."""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings, strategies as st

from configs import default as default_config
from jaxdiff.common import plotting
from jaxdiff.core import likelihood
from jaxdiff.drivers import config_checks, eval_features, eval_mode, sample_mode, train_loop
from jaxdiff.drivers import eval_config as eval_block
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.evaluation import accuracy, features, fid, inception
from jaxdiff.evaluation import classifier as classifier_lib
from jaxdiff.training import checkpoint, keys
from tests.conftest import tiny_config

EVAL_OVERRIDES = {  # tiny_config + a conditional model + an eval setup that runs in seconds
    "model.class_conditional": True, "model.ch_mult": (1,), "model.attn_resolutions": (), "diffusion.num_timesteps": 20,
    "diffusion.schedule": "cosine", "training.eval_every": 10,
    "eval.classifier_ch": 16, "eval.classifier_features": 32, "eval.classifier_steps": 300,
    "eval.classifier_batch_size": 64, "eval.classifier_learning_rate": 2e-3, "eval.num_samples": 40,
    "eval.batch_size": 20, "eval.train_fid_samples": 40, "eval.kid_subsets": 5, "eval.kid_subset_size": 20,
    "eval.bpd_num_images": 40, "eval.bpd_batch_size": 20, "eval.samples_per_class": 2,
    "eval.guidance_scales": (0.0, 1.0),
}


def random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d + 3))
    return a @ a.T / a.shape[1]


# ----------------------------------------------------------------------------- matrix square root and FID


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), d=st.integers(1, 24))
def test_sqrtm_psd_matches_scipy(seed, d):
    a = random_cov(np.random.default_rng(seed), d)
    ours = fid.sqrtm_psd(a)
    np.testing.assert_allclose(ours, np.real(scipy.linalg.sqrtm(a)), atol=1e-8 * max(1, np.abs(a).max()))
    np.testing.assert_allclose(ours @ ours, a, atol=1e-9 * max(1, np.abs(a).max()))


def scipy_fid(mu1, s1, mu2, s2):
    """pytorch-fid's formula: scipy.linalg.sqrtm of the (non-symmetric) product."""
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), d=st.integers(2, 32))
def test_fid_matches_scipy_on_random_statistics(seed, d):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_cov(rng, d), random_cov(rng, d)
    ref = scipy_fid(mu1, s1, mu2, s2)
    assert abs(fid.frechet_distance(mu1, s1, mu2, s2) - ref) < 1e-7 * max(1.0, abs(ref))
    assert abs(fid.trace_sqrt_product(s1, s2) - np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2)))) < 1e-7 * d


@settings(max_examples=20, deadline=None)
@given(a=st.lists(st.floats(0.0, 5.0), min_size=3, max_size=3), b=st.lists(st.floats(0.0, 5.0), min_size=3, max_size=3),
       shift=st.floats(-3, 3))
def test_fid_closed_form_for_commuting_covariances(a, b, shift):
    """Diagonal covariances commute: FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2, also when singular."""
    mu1, mu2 = np.zeros(3), np.full(3, shift)
    expected = 3 * shift ** 2 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    distance = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert abs(distance - expected) < 1e-9 * max(1, expected) + 1e-9
    assert abs(fid.frechet_distance(mu2, np.diag(b), mu1, np.diag(a)) - distance) < 1e-9 * max(1, distance) + 1e-9


def test_feature_stats_match_numpy_and_stream():
    rng = np.random.default_rng(0)
    f = rng.normal(5.0, 2.0, size=(500, 7)) @ rng.normal(size=(7, 7))
    stats = fid.feature_stats(f)
    np.testing.assert_allclose(stats.mu, f.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(f, rowvar=False), rtol=1e-10, atol=1e-10)
    acc = fid.StatsAccumulator()
    for chunk in np.array_split(f, 7):
        acc.update(chunk)
    np.testing.assert_allclose(acc.result().sigma, stats.sigma, rtol=1e-10, atol=1e-10)


def test_sample_count_not_above_feature_dim_is_refused():
    with pytest.raises(fid.EvalError, match="more than 16"):
        fid.check_sample_count(16, 16, "eval.num_samples")
    fid.check_sample_count(17, 16, "eval.num_samples")


# ----------------------------------------------------------------------------- KID


def test_mmd2_matches_explicit_float64_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.3, 1.0, size=(12, 5))
    k = lambda a, b: (a @ b / 5 + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
    assert abs(fid.mmd2_unbiased(x, y) - (xx + yy - 2 * xy)) < 1e-10


def test_kid_is_unbiased_on_equal_distributions():
    """Independent sets from one distribution: the KID estimates average to 0 within their error,
    while the biased (V-statistic) estimate, which keeps the diagonal, is clearly positive."""
    rng = np.random.default_rng(1)
    vals, biased = [], []
    for _ in range(200):
        x, y = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
        vals.append(fid.mmd2_unbiased(x, y))
        k = fid.polynomial_kernel
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    vals, biased = np.array(vals), np.array(biased)
    se = vals.std() / np.sqrt(len(vals))
    assert abs(vals.mean()) < 4 * se
    assert biased.mean() > 20 * se
    mean, std, m = fid.kid(rng.normal(size=(300, 8)), rng.normal(size=(300, 8)), 50, 100, 0)
    assert m == 100 and abs(mean) < 5 * std / np.sqrt(50) + 1e-12
    far, _, _ = fid.kid(rng.normal(size=(300, 8)), rng.normal(1.0, 1.0, size=(300, 8)), 50, 100, 0)
    assert far > 10 * std


# ----------------------------------------------------------------------------- quantisation


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1))
def test_uint8_round_trip_and_clip(seed):
    u = np.random.default_rng(seed).integers(0, 256, (5, 4, 4, 3)).astype(np.uint8)
    np.testing.assert_array_equal(plotting.to_uint8(u.astype(np.float32) / 127.5 - 1.0), u)


def test_uint8_quantisation_values():
    x = np.array([-2.0, -1.0, -0.999, 0.0, 0.5, 1.0, 3.0])
    np.testing.assert_array_equal(plotting.to_uint8(x), [0, 0, 0, 128, 191, 255, 255])


# ----------------------------------------------------------------------------- the digits classifier


@pytest.fixture(scope="module")
def eval_config(tmp_path_factory):
    config = tiny_config(**EVAL_OVERRIDES)
    config.eval.classifier_dir = str(tmp_path_factory.mktemp("classifier"))  # shared by every test here
    return config


@pytest.fixture(scope="module")
def digits_splits(eval_config):
    train, test, note = eval_features.load_splits(eval_config.data)
    assert "holds out 359 of 1797" in note and len(train) + len(test) == 1797
    return train, test  # in-memory sources


@pytest.fixture(scope="module")
def digits_classifier(eval_config, digits_splits):
    train, test = digits_splits
    spec = eval_features.classifier_spec(eval_config, train)
    cache = eval_config.eval.classifier_dir
    return classifier_lib.get_classifier(spec, train, test, cache, log=lambda *_: None), cache


STATED_DIGITS_ACCURACY = 0.95


def test_classifier_reaches_stated_accuracy_and_caches(digits_classifier, digits_splits):
    clf, cache = digits_classifier
    assert clf.test_accuracy >= STATED_DIGITS_ACCURACY, clf.test_accuracy
    params_path, record_path = classifier_lib.cache_paths(cache, clf.spec)
    with open(record_path) as f:
        assert json.load(f)["test_accuracy"] == clf.test_accuracy
    again = classifier_lib.get_classifier(clf.spec, None, None, cache, log=lambda *_: None)  # no data: from cache
    x = digits_splits[1].images[:16]
    np.testing.assert_allclose(np.asarray(again.apply_fn()(x)[1]), np.asarray(clf.apply_fn()(x)[1]), rtol=1e-6)
    # a damaged cache is not trusted: it is trained again (here it stops at the missing data, saying so first)
    damaged = str(params_path) + ".bak"
    os.replace(params_path, damaged)
    params_path.write_bytes(b"\x85garbage")
    messages = []
    with pytest.raises(TypeError):
        classifier_lib.get_classifier(clf.spec, None, None, cache, log=messages.append)
    assert "cannot be used" in messages[0] and "training again" in messages[0]
    os.replace(damaged, params_path)


@pytest.fixture(scope="module")
def digits_reference(digits_classifier, digits_splits, tmp_path_factory):
    clf, _ = digits_classifier
    ext = features.classifier_extractor(clf)
    path = str(tmp_path_factory.mktemp("ref") / "ref.npz")
    return ext, features.reference_statistics(ext, digits_splits[0], path, 128, log=lambda *_: None)


def test_fid_of_data_against_itself_is_zero_and_noise_is_far(digits_reference, digits_splits):
    ext, ref = digits_reference
    train, test = digits_splits
    same = features.fid_kid(ext, train.images, ref, 128, 10, 200)
    held = features.fid_kid(ext, test.images, ref, 128, 10, 200)
    noise = np.random.default_rng(0).integers(0, 256, test.images.shape).astype(np.uint8)
    far = features.fid_kid(ext, noise, ref, 128, 10, 200)
    assert same["fid"] < 1e-6 * np.trace(ref.stats.sigma)
    assert same["num_samples"] == len(train) and same["feature_dim"] == 32
    assert far["fid"] > 20 * held["fid"] and far["fid"] > 1.0, (held["fid"], far["fid"])
    assert far["kid"] > 20 * abs(held["kid"])
    assert same["comparable_with_papers"] is False


def test_reference_statistics_are_cached(digits_reference, digits_splits, tmp_path):
    ext, ref = digits_reference
    messages = []
    again = features.reference_statistics(ext, digits_splits[0].images, ref.path, 128, log=messages.append)
    assert messages and "from" in messages[0]
    np.testing.assert_array_equal(again.stats.sigma, ref.stats.sigma)
    # a damaged cache (here: truncated) is computed again, saying so, and replaced
    damaged = tmp_path / "ref.npz"
    damaged.write_bytes(open(ref.path, "rb").read()[:300])
    messages = []
    recomputed = features.reference_statistics(ext, digits_splits[0].images, str(damaged), 128, log=messages.append)
    assert "cannot be used" in messages[0] and "computing" in messages[1]
    np.testing.assert_allclose(recomputed.stats.sigma, ref.stats.sigma, rtol=1e-5, atol=1e-6)
    assert features.reference_statistics(ext, digits_splits[0].images, str(damaged), 128, log=lambda *_: None)


def test_conditional_accuracy_plumbing(digits_classifier, digits_splits, tmp_path):
    """A 'generator' that returns real test digits of the class asked for scores the classifier's
    own accuracy; one that ignores the label scores near chance; the table and plot are written."""
    clf, _ = digits_classifier
    images, labels = digits_splits[1].images, digits_splits[1].labels
    by_class = [images[labels == c] for c in range(10)]

    def make_generate(w):
        def generate(params, key, ys):
            ys = np.asarray(ys)
            rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2 ** 30)))
            src = ys if w > 0 else rng.integers(0, 10, len(ys))
            picks = [by_class[c][rng.integers(len(by_class[c]))] for c in src]
            return jnp.asarray(np.stack(picks), jnp.float32) / 127.5 - 1.0
        return generate

    apply = clf.apply_fn()
    rows = accuracy.conditional_accuracy(make_generate, None, lambda x: apply(x)[0], 10, 20, (0.0, 1.0), 64,
                                         jax.random.PRNGKey(0))
    assert rows[1]["accuracy"] > 0.9 and rows[0]["accuracy"] < 0.35
    assert len(rows[1]["per_class"]) == 10 and rows[1]["num_samples"] == 200
    accuracy.plot_conditional_accuracy(rows, clf.test_accuracy, str(tmp_path / "acc.png"))
    assert os.path.getsize(tmp_path / "acc.png") > 1000
    assert "| 1 | " in accuracy.accuracy_table(rows, clf.test_accuracy)


# ----------------------------------------------------------------------------- FID InceptionV3


def fake_inception_npz(path, rng, drop=None, reshape=None):
    arrays = {}
    for key, (_, _, _, shape) in inception.torch_key_map().items():
        if key.endswith("running_var"):
            arrays[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith("conv.weight"):
            arrays[key] = (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
        else:
            arrays[key] = (0.1 * rng.normal(size=shape)).astype(np.float32)
    arrays["fc.weight"] = np.zeros((1008, 2048), np.float32)  # present in pytorch-fid's file; ignored
    if drop:
        del arrays[drop]
    if reshape:
        arrays[reshape] = arrays[reshape][..., :1]
    np.savez(path, **arrays)
    return arrays


def test_inception_layout_matches_pytorch_fid():
    keys = inception.torch_key_map()
    assert len(keys) == 94 * 5  # 94 BasicConv2d layers, each conv.weight + 4 BatchNorm arrays
    assert keys["Conv2d_1a_3x3.conv.weight"][3] == (32, 3, 3, 3)
    assert keys["Mixed_6b.branch7x7_2.conv.weight"][3] == (128, 128, 1, 7)
    assert keys["Mixed_7c.branch_pool.conv.weight"][3] == (192, 2048, 1, 1)
    assert keys["Mixed_7b.branch3x3dbl_1.conv.weight"][3] == (448, 1280, 1, 1)
    n = sum(np.prod(v[3]) for k, v in keys.items() if not k.endswith(("running_mean", "running_var")))
    assert n == 23_834_568 - (2048 * 1000 + 1000)  # torchvision inception_v3 (no aux) minus its fc


def test_inception_features_with_random_weights(tmp_path):
    arrays = fake_inception_npz(tmp_path / "w.npz", np.random.default_rng(0))
    variables = inception.load_weights(str(tmp_path / "w.npz"))
    k = arrays["Mixed_6b.branch7x7_2.conv.weight"]  # [O, I, 1, 7] -> [1, 7, I, O]
    np.testing.assert_array_equal(variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
                                  np.transpose(k, (2, 3, 1, 0)))
    fn = inception.make_feature_fn(variables)
    imgs = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    f = np.asarray(fn(imgs))
    assert f.shape == (2, 2048) and np.all(np.isfinite(f)) and np.all(f >= 0)
    assert np.abs(f[0] - f[1]).max() > 0
    grey = np.asarray(fn(imgs[..., :1]))  # grey images are repeated to RGB
    np.testing.assert_allclose(grey, np.asarray(fn(np.repeat(imgs[..., :1], 3, -1))), rtol=1e-5, atol=1e-6)


def test_basic_conv_matches_pytorch_semantics():
    """conv with a (1, 7) kernel and padding (0, 3), then BatchNorm(eps 1e-3) and ReLU, against a
    float64 NumPy cross-correlation on the PyTorch OIHW weight (catches transposed kernels)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 9, 3))
    w = rng.normal(size=(4, 3, 1, 7))  # OIHW
    gamma, beta, mean, var = rng.normal(size=4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)
    layer = inception.BasicConv(4, (1, 7), padding=(0, 3))
    variables = {"params": {"conv": {"kernel": np.transpose(w, (2, 3, 1, 0))}, "bn": {"scale": gamma, "bias": beta}},
                 "batch_stats": {"bn": {"mean": mean, "var": var}}}
    ours = np.asarray(layer.apply(jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), variables),
                                  jnp.asarray(x, jnp.float32)))
    xp = np.pad(x, ((0, 0), (0, 0), (3, 3), (0, 0)))
    conv = np.zeros((1, 5, 9, 4))
    for o in range(4):
        for j in range(9):
            conv[0, :, j, o] = np.einsum("hwc,cw->h", xp[0, :, j:j + 7, :], w[o, :, 0, :])
    ref = np.maximum((conv - mean) / np.sqrt(var + 1e-3) * gamma + beta, 0)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_avg_pool_excludes_padding_and_resize_matches_torch_bilinear():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    pooled = np.asarray(inception._avg_pool_3x3(jnp.asarray(x)))
    assert pooled[0, 0, 0, 0] == pytest.approx(np.mean(x[0, :2, :2, 0]))  # 4 real pixels, not 9
    assert pooled[0, 1, 1, 0] == pytest.approx(np.mean(x[0, :3, :3, 0]))
    # F.interpolate(bilinear, align_corners=False): src = (dst + 0.5) * in / out - 0.5, clamped at 0
    img = np.random.default_rng(0).integers(0, 256, (1, 5, 5, 3)).astype(np.uint8)
    ours = np.asarray(inception.preprocess(jnp.asarray(img)))[0]
    src = np.clip((np.arange(299) + 0.5) * 5 / 299 - 0.5, 0, None)
    i0 = np.floor(src).astype(int)
    i1, f = np.minimum(i0 + 1, 4), src - i0
    v = img[0].astype(np.float64) / 255
    rows = v[i0] * (1 - f)[:, None, None] + v[i1] * f[:, None, None]
    ref = rows[:, i0] * (1 - f)[None, :, None] + rows[:, i1] * f[None, :, None]
    np.testing.assert_allclose(ours, 2 * ref - 1, atol=1e-5)


@pytest.mark.parametrize("problem", ["missing", "wrong_shape", "absent_key", "not_npz", "unset"])
def test_inception_weight_errors(tmp_path, problem):
    path = tmp_path / "w.npz"
    rng = np.random.default_rng(0)
    if problem == "wrong_shape":
        fake_inception_npz(path, rng, reshape="Mixed_5b.branch5x5_2.conv.weight")
    elif problem == "absent_key":
        fake_inception_npz(path, rng, drop="Mixed_7c.branch_pool.bn.running_var")
    elif problem == "not_npz":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    arg = "" if problem == "unset" else str(path)
    with pytest.raises(inception.InceptionWeightsError) as e:
        inception.load_weights(arg)
    msg = str(e.value)
    assert "\n" not in msg and "pt_inception-2015-12-05" in msg
    if problem == "wrong_shape":
        assert "Mixed_5b.branch5x5_2.conv.weight" in msg and "(64, 48, 5, 5)" in msg
    if problem == "absent_key":
        assert "Mixed_7c.branch_pool.bn.running_var" in msg


def test_inception_comparable_with_papers_only_for_pytorch_fids_file(tmp_path):
    """comparable_with_papers needs the weights file to be pytorch-fid's release (SHA-256 prefix
    6726825d, as torch.hub checks it); an .npz records its SHA-256 and stays unverified. The
    reference-cache fingerprint (SHA-1 prefix) is unchanged."""
    path = tmp_path / "w.npz"
    fake_inception_npz(path, np.random.default_rng(0))
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    extractor = features.inception_extractor(str(path))
    assert extractor.fingerprint == hashlib.sha1(data).hexdigest()[:12]
    assert extractor.comparable_with_papers is False
    assert extractor.info["inception_weights_sha256"] == sha256
    assert extractor.info["inception_weights_verified"] is False
    assert inception.weights_provenance(str(path), released_prefix=sha256[:8])["inception_weights_verified"] is True
    assert inception.PYTORCH_FID_FILE.endswith(f"-{inception.PYTORCH_FID_SHA256_PREFIX}.pth")
    m = {"fid": 1.0, "kid": 0.0, "feature_extractor": "inception", "num_samples": 10, "num_reference": 20,
         "reference_split": "train", "comparable_with_papers": False, "inception_weights_verified": False}
    assert "not comparable with papers (Inception weights not verified as pytorch-fid's)" in eval_mode.summary_line(m)
    m.update(comparable_with_papers=True, inception_weights_verified=True)
    assert "comparable" not in eval_mode.summary_line(m)


# ----------------------------------------------------------------------------- config checks


def test_validate_eval_rejects_bad_input(tmp_path):
    config = default_config.get_config()
    eval_block.validate_eval(config)
    config.eval.num_samples = 100  # below the classifier's 128 features
    with pytest.raises(config_checks.ConfigError, match="FID is undefined"):
        eval_block.validate_eval(config)
    config = default_config.get_config()
    config.eval.feature_extractor = "inception"
    config.eval.inception_weights = str(tmp_path / "nope.npz")
    with pytest.raises(config_checks.ConfigError, match="does not exist"):
        eval_block.validate_eval(config)
    config.eval.feature_extractor = "lenet"
    with pytest.raises(config_checks.ConfigError, match="feature_extractor"):
        eval_block.validate_eval(config)
    config = default_config.get_config()
    config.training.eval_every = 100
    config.eval.train_fid_samples = 64
    with pytest.raises(config_checks.ConfigError, match="train_fid_samples"):
        eval_block.validate_eval(config)


# ----------------------------------------------------------------------------- --mode=eval end to end



def test_train_with_cheap_fid_then_eval_mode(tmp_path, eval_config, digits_classifier):
    config = eval_config  # its classifier_dir already holds the trained classifier
    workdir = str(tmp_path / "run")
    train_loop.train(config, workdir, progress=False)
    with open(os.path.join(workdir, "eval", "train_fid.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [10, 20] and all(np.isfinite(r["fid"]) and r["fid"] > 0 for r in rows)

    m = eval_mode.run_eval(config, workdir, log=lambda *_: None)
    with open(os.path.join(workdir, "eval", "metrics.json")) as f:
        written = json.load(f)
    assert written["fid"] == m["fid"] and written["checkpoint_step"] == 20
    assert m["num_samples"] == 40 and m["feature_extractor"] == "classifier" and m["feature_dim"] == 32
    assert m["params"] == "ema" and m["comparable_with_papers"] is False and m["kid_subset_size"] == 20
    assert m["fid"] > 0 and np.isfinite(m["kid"])
    assert m["bpd_num_images"] == 40 and 0 < m["bpd"] < 1e4 and m["bpd_conditioning"] == "null label"
    assert set(m["conditional_accuracy"]) == {"0", "1"}
    assert m["classifier_test_accuracy"] == digits_classifier[0].test_accuracy and "holds out" in m["splits"]
    tag = eval_mode.eval_tag(config, 20)
    for name in (f"metrics_{tag}.json", *(f"conditional_accuracy_{tag}{ext}" for ext in (".json", ".md", ".png"))):
        assert os.path.exists(os.path.join(workdir, "eval", name))
    refs = [f for f in os.listdir(os.path.join(workdir, "eval")) if f.startswith("reference_digits_8x8x1_train")]
    assert len(refs) == 1  # computed once by the training hook, reused by --mode=eval
    assert "not comparable with papers" in eval_mode.summary_line(m)

    # bits/dim of the trained tiny model is below that of the untrained one (same images, same keys)
    trainer = Experiment(config, 1, 10)
    _, test, _ = eval_features.load_splits(config.data)
    bpd_fn = likelihood.make_bpd_fn(lambda p, x, t: trainer.apply_fn(p, x, t, None),
                                    trainer.tables, "eps", config.sampling.variance)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), keys.EVAL_STREAM), 20)
    untrained = likelihood.dataset_bpd(bpd_fn, trainer.init().ema_params, test.images[:40], 20,
                                       jax.random.fold_in(key, 1))
    print("bits/dim trained", m["bpd"], "untrained", untrained["bpd"])
    assert m["bpd"] < untrained["bpd"] - 5 * (m["bpd_stderr"] + untrained["bpd_stderr"]), (m["bpd"], untrained)


def test_a_continuous_family_trains_samples_and_evaluates_like_ddpm(tmp_path, eval_config, digits_classifier):
    """diffusion.family=edm with a cosine-free config: grids, checkpoints, the training FID, sample mode
    (the configured Heun) and eval mode (its own fast sampler) all run; bits/dim (the discrete DDPM
    bound) is skipped and says so."""
    config = eval_config.copy_and_resolve_references()
    config.diffusion.family = "edm"
    config.sampling.num_steps = 4
    config.eval.num_steps = 3  # eval.sampler=auto: DPM-Solver++ whatever sampling.sampler says
    workdir = str(tmp_path / "edm")
    train_loop.train(config, workdir, progress=False)
    assert os.path.exists(os.path.join(workdir, "samples_0000020.png"))
    out = sample_mode.run_sample_mode(config, workdir)
    assert out["sampler"] == "heun" and out["family"] == "edm" and out["network_evaluations"] == 7
    assert os.path.exists(os.path.join(workdir, out["files"]["npz"])) and "heun4_0000020_" in out["files"]["npz"]
    lines = []
    m = eval_mode.run_eval(config, workdir, log=lines.append)
    assert m["family"] == "edm" and m["sampler"] == "dpm_solver++" and m["network_evaluations"] == 3
    assert m["bpd"] is None and any("bits/dim skipped" in line for line in lines)
    assert np.isfinite(m["fid"]) and set(m["conditional_accuracy"]) == {"0", "1"}


def test_eval_without_checkpoint_is_one_clear_error(tmp_path):
    from tests.conftest import run_main

    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        eval_mode.run_eval(tiny_config(**EVAL_OVERRIDES), str(tmp_path / "empty"))
    assert not os.path.exists(tmp_path / "empty")
    r = run_main("--config=configs/digits.py", f"--workdir={tmp_path}", "--mode=eval",
                 "--config.eval.num_samples=64")
    assert r.returncode == 2 and "FID is undefined" in r.stderr and "more than 128" in r.stderr
    r = run_main("--config=configs/digits.py", f"--workdir={tmp_path}", "--mode=eval")
    assert r.returncode == 2 and "no checkpoint" in r.stderr and "--mode=train" in r.stderr
    assert os.listdir(tmp_path) == []
