"""What evaluation measures samples against: the dataset's train / test splits (a held-out part for a
source with one split), the feature extractor (jaxdiff's classifier, trained and cached, or
InceptionV3) and where the reference statistics and the classifier are cached. Shared by
``--mode=eval``, the FID logged while training (:mod:`jaxdiff.drivers.eval_mode`), edit mode's
dataset inputs and the benchmarks.
"""

from __future__ import annotations

import numpy as np

from jaxdiff.common import paths
from jaxdiff.data import ArraySource
from jaxdiff.drivers.data_config import load_source
from jaxdiff.drivers import config_checks
from jaxdiff.drivers.progress import GuardedBar
from jaxdiff.evaluation import classifier as classifier_lib
from jaxdiff.evaluation.features import FeatureExtractor, classifier_extractor, inception_extractor

HELD_OUT_FRACTION = 0.2  # test share carved from a source that has no test split (digits)


def load_splits(data_config, train_source=None) -> tuple:
    """``(train, test, note)``: the sources of the configured dataset's splits (``train_source`` when
    the caller has it loaded already, so nothing is decoded twice). Images are read batch by batch
    by whatever uses them; in-memory sources stay as they are.

    A source without a test split (``load_source`` gives the training images for ``"test"``, as for
    scikit-learn's digits) is split once, deterministically: a ``default_rng(0)`` permutation sends
    :data:`HELD_OUT_FRACTION` of it to ``test``; ``note`` says so.
    """
    train = train_source if train_source is not None else load_source(data_config, "train")
    try:
        test = load_source(data_config, "test")
    except (ValueError, KeyError, TypeError):
        test = train
    same = test is train or (isinstance(test, ArraySource) and isinstance(train, ArraySource)
                             and test.images.shape == train.images.shape
                             and np.array_equal(test.labels, train.labels)
                             and np.array_equal(test.images, train.images))
    if not same:
        return train, test, f"{data_config.dataset} train/test splits"
    n = len(train)
    perm = np.random.default_rng(0).permutation(n)
    k = int(round(n * HELD_OUT_FRACTION))
    te, tr = np.sort(perm[:k]), np.sort(perm[k:])
    images, labels = train[np.arange(n)]
    subset = lambda idx: ArraySource(np.asarray(images)[idx], np.asarray(labels)[idx], train.num_classes,  # noqa: E731
                                     train.name, tuple(train.class_names))
    note = (f"{data_config.dataset} has no test split: a fixed default_rng(0) permutation holds out "
            f"{k} of {n} images as the test split (a model trained on the whole source has seen them)")
    return subset(tr), subset(te), note


def classifier_spec(config, train) -> classifier_lib.ClassifierSpec:
    """What the feature classifier of ``config`` trained on ``train`` (a labelled source) depends on."""
    ev = config.eval
    if not train.num_classes:
        raise config_checks.ConfigError(f"{config.data.dataset} has no labels, so jaxdiff's classifier cannot be "
                                        "trained on it: set --config.eval.feature_extractor=inception")
    return classifier_lib.ClassifierSpec(
        dataset=config.data.dataset, image_shape=tuple(int(s) for s in train.image_shape),
        num_classes=int(train.num_classes), num_train=int(len(train)),
        ch=ev.classifier_ch, features=ev.classifier_features, steps=ev.classifier_steps,
        batch_size=ev.classifier_batch_size, learning_rate=float(ev.classifier_learning_rate), seed=int(config.seed))


def classifier_dir(config, workdir):
    return paths.as_path(config.eval.classifier_dir or paths.as_path(workdir) / "eval")


def reference_path(workdir, dataset: str, image_shape, split: str, extractor: FeatureExtractor):
    size = "x".join(str(s) for s in image_shape)
    return paths.as_path(workdir) / "eval" / (f"reference_{dataset}_{size}_{split}_{extractor.name}_"
                                              f"{extractor.fingerprint}.npz")


def build_extractor(config, workdir, train, test, log=print, for_accuracy: bool = True, stop_check=None):
    """``(extractor, classifier or None)``: the classifier is trained/cached whenever it is needed
    (classifier features, or, with ``for_accuracy``, conditional accuracy of a class-conditional model).
    Training it shows a bar whose updates run ``stop_check``
    (see :func:`~jaxdiff.drivers.eval_mode.evaluate_params`)."""
    clf = None
    if config.eval.feature_extractor == "classifier" or (for_accuracy and config.model.class_conditional):
        spec = classifier_spec(config, train)
        with GuardedBar(spec.steps, "classifier", stop_check, unit="step", leave=False) as bar:
            clf = classifier_lib.get_classifier(spec, train, test, classifier_dir(config, workdir), log, bar)
    if config.eval.feature_extractor == "inception":
        return inception_extractor(config.eval.inception_weights), clf
    return classifier_extractor(clf), clf
