"""PyTorch state dicts <-> Flax parameter trees, for any network whose parameter names map one-to-one
onto the state dict's keys (``key_of(path)``), and the JSON files of model folders.

Layouts: torch conv ``[O, I, kh, kw]`` <-> Flax ``[kh, kw, I, O]``, linear ``[out, in]`` <-> ``[in, out]``;
biases, norm scales (``weight`` <-> ``scale``) and embedding tables as they are. Old diffusers hub
checkpoints name attention ``query / key / value / proj_attn``: read as ``to_q / to_k / to_v /
to_out.0``, as diffusers renames them.
"""

from __future__ import annotations

import json
from typing import Callable

import jax
import numpy as np

from jaxdiff.common import paths
from jaxdiff.interop.safetensors_file import WeightsError

LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}  # Flax -> torch
LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
KeyOf = Callable[[tuple], str]  # a Flax parameter path (module names, then the leaf) -> its state-dict key


def to_torch_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    """A Flax parameter named ``leaf`` in PyTorch's layout: kernels ``[kh, kw, I, O] -> [O, I, kh, kw]``
    and ``[in, out] -> [out, in]``; biases, norm scales and embedding tables as they are."""
    if leaf != "kernel":
        return array
    return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T


def from_torch_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    """The inverse of :func:`to_torch_layout`."""
    if leaf != "kernel":
        return array
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T


def renamed_legacy_attention(state_dict: dict) -> dict:
    """Old hub checkpoints' attention names (``attentions.0.query.weight``) as diffusers reads them."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) >= 2 and parts[-2] in LEGACY_ATTENTION and "attentions" in parts:
            key = ".".join(parts[:-2] + [LEGACY_ATTENTION[parts[-2]], parts[-1]])
        out[key] = value
    return out


def params_from_state_dict(state_dict: dict, shapes, key_of: KeyOf, where: str) -> dict:
    """Flax parameters (float32 NumPy) with the structure and shapes of ``shapes`` from ``state_dict``:
    every parameter's key must be present with its shape, and no other key may be left over; each
    failure is a one-line :class:`WeightsError` naming the key and ``where`` (the file)."""
    state_dict = renamed_legacy_attention(state_dict)
    params: dict = {}
    used = set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        names = tuple(p.key for p in path)
        key = key_of(names)
        if key not in state_dict:
            raise WeightsError(f"{where} lacks {key}, which the network of its config.json has")
        array = from_torch_layout(np.asarray(state_dict[key]), names[-1])
        if array.shape != tuple(leaf.shape):
            raise WeightsError(f"{where}: {key} has shape {tuple(state_dict[key].shape)}, the network of its "
                               f"config.json needs {to_torch_layout(np.zeros(leaf.shape, np.int8), names[-1]).shape}")
        node = params
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = np.asarray(array, np.float32)
        used.add(key)
    extra = sorted(set(state_dict) - used)
    if extra:
        raise WeightsError(f"{where} has {len(extra)} weight(s) the network of its config.json lacks, "
                           f"e.g. {extra[0]}")
    return params


def state_dict_from_params(params: dict, key_of: KeyOf) -> dict[str, np.ndarray]:
    """The state dict (float32, PyTorch layouts) of Flax parameters."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = tuple(p.key for p in path)
        out[key_of(names)] = to_torch_layout(np.asarray(leaf, np.float32), names[-1])
    return out


def check_model_config(config: dict, class_name: str, fields, version: str, where: str) -> None:
    """Raise a one-line :class:`WeightsError` unless a diffusers ``config.json`` is of ``class_name``
    (or says nothing) and has no argument outside ``fields`` (keys starting with ``_`` are metadata)."""
    if config.get("_class_name", class_name) != class_name:
        raise WeightsError(f"{where}: _class_name={config['_class_name']!r}: jaxdiff reads {class_name} folders "
                           "here")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in fields)
    if unknown:
        raise WeightsError(f"{where}: unknown {class_name} field {unknown[0]!r} (diffusers {version} has no such "
                           "argument)")


def read_json(path: str) -> dict:
    """A model folder's JSON file as a dict (a one-line :class:`WeightsError` if it is not one)."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"cannot read {path} as JSON ({' '.join(str(e).split())})") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path} is not a JSON object")
    return config


def write_json(path, obj: dict) -> None:
    """Write ``obj`` as indented, key-sorted JSON (atomically; a local path or a URL)."""
    paths.write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
