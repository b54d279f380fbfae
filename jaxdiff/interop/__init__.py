"""Interoperability with PyTorch model files: safetensors weights and Hugging Face diffusers folders.

Pure NumPy and JSON (neither torch nor diffusers is needed): :mod:`safetensors_file` reads and
writes the weights, :mod:`diffusers_unet` maps ``UNet2DModel`` folders to jaxdiff's U-Net and back,
:mod:`diffusers_autoencoder` maps ``AutoencoderKL`` folders to jaxdiff's KL autoencoder and back,
:mod:`diffusers_scheduler` maps a ``scheduler_config.json`` to jaxdiff's diffusion settings and back.
"""
