"""Interoperability with PyTorch model files: safetensors weights and Hugging Face diffusers folders.

Pure NumPy and JSON (neither torch nor diffusers is needed): :mod:`safetensors_file` reads and
writes the weights, :mod:`state_dicts` converts state dicts to Flax parameter trees and back (layouts,
old key names, one-line errors), :mod:`diffusers_unet` maps ``UNet2DModel`` folders to jaxdiff's U-Net
and back, :mod:`diffusers_autoencoder` ``AutoencoderKL`` folders to its KL autoencoder, and
:mod:`diffusers_scheduler` a ``scheduler_config.json`` to jaxdiff's diffusion settings and back (DDPM,
EDM and flow-matching schedulers), and :mod:`process_file` an exported folder's ``jaxdiff.json`` (the
diffusion process of every family, exactly).
"""
