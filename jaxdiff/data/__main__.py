"""Command line: ``python -m jaxdiff.data prepare NAME --data_dir DIR`` | ``info --dataset ... --data_dir ...``."""

from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

from jaxdiff.data.loading import load_source
from jaxdiff.data.sources import DataError
from jaxdiff.data.tfds_source import prepare_tfds

# The data fields `info` reads, at configs/default.py's defaults (tests/test_data.py keeps them equal).
INFO_DEFAULTS = {"dataset": "digits", "image_size": 8, "channels": 0, "data_dir": "", "download": False,
                 "image_key": "image", "label_key": "label", "random_flip": False, "cache_max_mb": 1024,
                 "num_workers": 2, "prefetch": 4}
LOAD_ARGUMENTS = ("image_size", "data_dir", "channels", "download", "image_key", "label_key", "cache_max_mb",
                  "num_workers")  # the fields load_source takes
NATIVE_SIZES = {"digits": 8, "idx": 28, "cifar_python": 32}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxdiff.data",
                                     description="Prepare a TFDS dataset, or show what a data config reads.")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="download + prepare a TFDS dataset as ArrayRecord (needs internet and TF)")
    prep.add_argument("name")
    prep.add_argument("--data_dir", default="")
    info = sub.add_parser("info", help="load a source as training would and print what it holds")
    info.add_argument("--dataset", default="digits")
    info.add_argument("--data_dir", default="")
    info.add_argument("--image_size", type=int, default=0, help="0 = the dataset's own (28 / 32 / ...)")
    info.add_argument("--split", default="train")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            print(prepare_tfds(args.name, args.data_dir))
            return 0
        d = dict(INFO_DEFAULTS, data_dir=args.data_dir,
                 image_size=args.image_size or NATIVE_SIZES.get(args.dataset, 64))
        src = load_source(args.dataset, args.split, **{k: d[k] for k in LOAD_ARGUMENTS})
        counts = np.bincount(np.asarray(src[np.arange(len(src))][1]), minlength=max(src.num_classes, 1))
        print(f"{src.name} [{args.split}]: {len(src)} images of shape {src.image_shape}, "
              f"{src.num_classes} classes, per class {counts.tolist()}")
        return 0
    except DataError as e:
        print(f"error: {e}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
