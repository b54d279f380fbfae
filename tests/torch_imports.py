"""Importing the PyTorch reference libraries (torch, torchvision, diffusers, pytorch-fid) for the
fixture scripts and live tests; none of them is a dependency of jaxdiff."""

import sys

import torch


def import_torchvision() -> None:
    """Import torchvision if it is installed. Where its C++ ops cannot load (pip's CUDA build of
    torchvision beside a CPU-only torch, all that PyPI offers), its import fails registering fake
    kernels for them (``torchvision::nms`` ...), and so does every library that imports it (diffusers,
    pytorch-fid); neither the Inception model nor diffusers' U-Nets use those ops, so the import is
    retried with those registrations skipped."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        register = torch.library.register_fake

        def skip_torchvision_ops(op, *args, **kwargs):
            return (lambda fn: fn) if str(op).startswith("torchvision::") else register(op, *args, **kwargs)

        torch.library.register_fake = skip_torchvision_ops
        try:
            import torchvision  # noqa: F401, F811
        finally:
            torch.library.register_fake = register
