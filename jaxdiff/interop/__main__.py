"""``python -m jaxdiff.interop FOLDER``: whether jaxdiff reads a diffusers ``UNet2DModel`` folder, and
with which settings (nothing is compiled).

Prints the network's parameter count and the ``--config`` flags of its architecture and diffusion
process (what ``--config.model.init_from=FOLDER`` sets), or the one-line reason it cannot be read
(exit code 2). Use the folder with ``main.py``: ``--mode=sample|eval|train --config.model.init_from=FOLDER``;
write a jaxdiff model as a diffusers folder with ``--mode=export``.
"""

from __future__ import annotations

import argparse
import sys

from jaxdiff.interop import diffusers_scheduler, diffusers_unet
from jaxdiff.models.unet import architecture, count_params


def _flag(name: str, value) -> str:
    if isinstance(value, tuple):
        value = "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return f"--config.{name}={value}"


def describe(path: str) -> list[str]:
    """The lines :func:`main` prints for the folder at ``path`` (raises ``WeightsError``)."""
    model = diffusers_unet.read_folder(path)
    classes = model.unet.num_classes
    size = f"{model.image_size}x{model.image_size}x{model.channels}"
    lines = [f"{path}: diffusers UNet2DModel, {count_params(model.params):,} parameters, {size} images"
             + (f", {classes} classes + the null label" if classes else ""),
             f"--config.data.image_size={model.image_size}"]
    lines += [_flag(f"model.{name}", value) for name, value in architecture(model.unet).items()]
    if model.process is not None:
        lines += [_flag(f"diffusion.{k}", v) for k, v in _flat(model.process)]
        lines.append("(the diffusion settings of jaxdiff.json, which wins over scheduler_config.json)")
    elif model.scheduler is None:
        lines.append("(no scheduler_config.json: the diffusion settings are the config's)")
    else:
        diffusion, sampling = diffusers_scheduler.diffusion_settings(model.scheduler)
        lines += [_flag(f"diffusion.{k}", v) for k, v in diffusion.items()]
        lines += [_flag(f"sampling.{k}", v) + "  # how diffusers' pipeline samples it" for k, v in sampling.items()]
    return lines


def _flat(fields: dict, prefix: str = ""):
    """``(dotted name, value)`` of every leaf of ``fields`` (nested blocks such as ``edm``)."""
    for name, value in fields.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{name}.")
        else:
            yield prefix + name, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxdiff.interop", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a diffusers model folder (config.json) or pipeline folder (unet/)")
    args = parser.parse_args(argv)
    try:
        print("\n".join(describe(args.folder)))
    except diffusers_unet.WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
