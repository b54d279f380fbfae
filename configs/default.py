"""Every configuration field jaxdiff reads, with its default. Dataset configs override a few.

Override any field on the command line: ``--config.training.batch_size=64``. An unknown field is
an error (ml_collections refuses it), and :func:`jaxdiff.drivers.config_checks.validate` checks values before any
compile or write.
"""

import ml_collections

from jaxdiff.core.families import FAMILIES


def with_family(config: ml_collections.ConfigDict, family: str) -> ml_collections.ConfigDict:
    """``config`` trained and sampled as ``family``: ``--config=configs/digits.py:edm`` (every dataset
    config takes the family after a colon). The sampler stays ``auto``, each family's own: DDPM over
    all T steps (ddpm), DPM-Solver++ 50 (vp), EDM's Heun with 18 steps / 35 NFE (edm), Euler 50 (flow)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} after the config file's colon; choose one of "
                         f"{', '.join(FAMILIES)}")
    config.diffusion.family = family
    return config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # every random key derives from this by fold_in(seed, step, ...)

    config.data = data = ml_collections.ConfigDict()
    # digits (sklearn, embedded) | idx (folder of MNIST-format idx files) | image_folder (one sub-folder
    # per class, or none) | cifar_python (CIFAR-10/100 python batches) | any TFDS image dataset name
    data.dataset = "digits"
    data.image_size = 8  # images are centre-cropped to a square and resized to image_size x image_size
    data.channels = 0  # 0 = the dataset's own | 1 = grayscale | 3 = RGB
    data.data_dir = ""  # TFDS data_dir ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets), or the local folder
    data.download = True  # TFDS only: download + prepare when missing (needs internet and TensorFlow)
    data.image_key = "image"  # TFDS only: the image feature
    data.label_key = "label"  # TFDS only: the class-label feature (absent = unlabelled)
    data.random_flip = False  # flip a random half of each batch left-right (never for digits)
    data.cache_max_mb = 1024  # decode the whole split into host memory when it fits in this many MiB
    data.num_workers = 2  # host threads reading batches ahead
    data.prefetch = 4  # batches read ahead of the train step

    config.model = model = ml_collections.ConfigDict()
    model.backbone = "unet"  # unet (DDPM's U-Net: the fields below) | dit (Diffusion Transformer: model.dit)
    model.ch = 64  # base channel count; level i has ch * ch_mult[i] channels
    model.ch_mult = (1, 2)  # one entry per resolution level; image_size must halve len-1 times
    model.num_res_blocks = 2  # res blocks per level going down (one more going up)
    model.attn_resolutions = (4,)  # feature-map sizes that get self-attention (the middle always does)
    model.dropout = 0.0
    model.num_heads = 1
    model.groups = 32  # GroupNorm groups (reduced to a divisor of the channel count when needed)
    model.class_conditional = False  # embed labels (+ a null label for classifier-free guidance)
    model.remat = False  # rematerialise res blocks in the backward pass (memory for compute)
    # The stride-2 downsampling conv's padding: same (TensorFlow SAME, DDPM's and diffusers'
    # downsample_padding=0) | symmetric (1 each side: diffusers' downsample_padding=1, jaxdiff < 0.4) |
    # auto (same for a new model; a checkpoint's own, symmetric if it predates this field)
    model.downsample_padding = "auto"
    model.norm_eps = 1e-6  # GroupNorm epsilon
    model.head_dim = 0  # > 0: attention heads of head_dim channels (diffusers' attention_head_dim), else num_heads
    model.flip_sin_to_cos = False  # time embedding [cos, sin] (diffusers) instead of DDPM's [sin, cos]
    model.freq_shift = 1.0  # time frequencies exp(-ln(1e4) k / (half - freq_shift)): DDPM 1 (diffusers' freq_shift)
    # A diffusers folder (UNet2DModel) or a jaxdiff workdir: the network (architecture, schedule, EMA weights)
    # to fine-tune from, or to sample / evaluate while --workdir has no checkpoint (docs/interop.md)
    model.init_from = ""
    model.dit = dit = ml_collections.ConfigDict()  # backbone=dit (Peebles & Xie 2023); class labels: class_conditional
    dit.size = ""  # S | B | L | XL: the paper's depth, width and heads (DiT-S/2 = size S, patch_size 2); "" = below
    dit.depth = 4
    dit.hidden_size = 128
    dit.num_heads = 4
    dit.patch_size = 2  # 2 | 4 | 8 in the paper; image (or latent) size must be a multiple
    dit.mlp_ratio = 4.0
    dit.learn_sigma = False  # DiT checkpoints' 2 x channels output (the variance half unused by jaxdiff)
    dit.attention = ""  # jax.nn.dot_product_attention implementation: "" (XLA) | cudnn (GPU flash attention, bf16)

    # --mode=train_autoencoder: a KL autoencoder (LDM's, diffusers' AutoencoderKL) on the same data, with
    # training.* except its own steps and learning rate; latent diffusion then uses it (config.latent)
    config.autoencoder = ae = ml_collections.ConfigDict()
    ae.block_out_channels = (32, 64)  # one entry per level: images are downsampled by f = 2^(levels - 1)
    ae.layers_per_block = 1
    ae.latent_channels = 4
    ae.norm_num_groups = 16  # must divide every entry of block_out_channels
    ae.mid_attention = True
    ae.reconstruction = "l1"  # l1 | l2
    ae.kl_weight = 1e-6  # LDM's; relative to the per-pixel reconstruction loss
    ae.num_train_steps = 2000
    ae.learning_rate = 1e-3
    # Latent diffusion (Rombach et al. 2022): with an autoencoder work directory, the diffusion model trains
    # and samples in its latent space (the training set encoded once, posterior means); grids, sample and
    # eval mode see decoded images
    config.latent = latent = ml_collections.ConfigDict()
    latent.autoencoder = ""  # a work directory of --mode=train_autoencoder ("" = pixel-space diffusion)
    latent.scale_factor = 0.0  # latents x this; 0 = measured: 1 / std of the encoded training set (as LDM's 0.18215)

    config.diffusion = diffusion = ml_collections.ConfigDict()
    # ddpm: the discrete T-step chain (DDPM) | vp: continuous-time variance preserving (schedule linear |
    # cosine) | edm: Karras et al. 2022 | flow: flow matching / rectified flow (the SD3 interpolant) |
    # meanflow: MeanFlow's average velocity, 1-4 step sampling (sampler jump; a network of two times) |
    # shortcut: shortcut models, the same network trained on its own jumps' self-consistency |
    # consistency: consistency models on EDM's network (iCT, ECT) | consistency_flow: the same on a flow network |
    # scm: continuous-time consistency models on TrigFlow (sCT; needs jax.jvp)
    diffusion.family = "ddpm"
    diffusion.num_timesteps = 1000  # T (ddpm)
    diffusion.schedule = "linear"  # ddpm: linear | cosine | sigmoid_abar | sigmoid_geodiff; vp: linear | cosine
    diffusion.beta_start = 1e-4  # linear and sigmoid_geodiff only
    diffusion.beta_end = 0.02
    diffusion.scale_betas_to_t = False  # linear: multiply both ends by 1000 / T (improved-diffusion)
    diffusion.zero_terminal_snr = False  # ddpm: rescale to SNR 0 at t=T (Lin et al. 2024; needs target v)
    diffusion.target = "auto"  # ddpm, vp: eps | x0 | v (auto = eps); edm and flow: auto (F, velocity)
    diffusion.loss_weighting = "none"  # ddpm, vp: none | min_snr
    diffusion.min_snr_gamma = 5.0
    diffusion.edm = edm = ml_collections.ConfigDict()  # family=edm (the paper's values)
    edm.sigma_data = 0.5
    edm.p_mean = -1.2  # training: ln sigma ~ N(p_mean, p_std^2)
    edm.p_std = 1.2
    edm.sigma_min = 0.002  # sampling grid: Karras sigmas from sigma_max to sigma_min, then 0
    edm.sigma_max = 80.0
    edm.rho = 7.0
    diffusion.flow = flow = ml_collections.ConfigDict()  # family=flow
    flow.t_sampling = "logit_normal"  # training times: uniform | logit_normal (SD3: t = sigmoid(N(loc, scale^2)))
    flow.loc = 0.0
    flow.scale = 1.0
    flow.shift = 1.0  # t' = shift t / (1 + (shift - 1) t) in training and sampling (SD3: 3 at 1024px)
    diffusion.meanflow = meanflow = ml_collections.ConfigDict()  # family=meanflow (Geng et al. 2025, ImageNet values)
    meanflow.p_mean = -0.4  # training times t, r = sigmoid(N(p_mean, p_std^2)), ordered r <= t
    meanflow.p_std = 1.0
    meanflow.equal_fraction = 0.75  # the fraction of each batch trained with r = t (plain flow matching)
    meanflow.norm_p = 1.0  # adaptive loss weight 1 / (L + norm_eps)^norm_p (CIFAR-10: 0.75)
    meanflow.norm_eps = 0.01
    diffusion.shortcut = shortcut = ml_collections.ConfigDict()  # family=shortcut (Frans et al. 2024)
    shortcut.levels = 7  # bootstrap jumps of span 2^-k, k < levels (the paper's 128 steps: 7)
    shortcut.bootstrap_every = 8  # one row in this many trains self-consistency, the rest flow matching
    diffusion.consistency = cm = ml_collections.ConfigDict()  # family=consistency | consistency_flow
    cm.schedule = "ict"  # ict: a doubling number of Karras levels | ect: sigma_r / sigma_t rises each stage (init_from EDM)
    cm.double_every = 25_000  # training steps per doubling of levels (ict) or stage (ect); iCT: steps / 8
    cm.p_mean = -1.1  # noise levels: ln sigma ~ N(p_mean, p_std^2) (ict: discretised)
    cm.p_std = 2.0
    cm.huber_c = 0.00054  # pseudo-Huber distance, c = huber_c sqrt(dim) (iCT); 0: the L2 norm (ECT)
    cm.sigma_min = 0.002  # consistency: f(x, sigma_min) = x; sigma_data is diffusion.edm's
    cm.sigma_max = 80.0
    cm.rho = 7.0
    diffusion.scm = scm = ml_collections.ConfigDict()  # family=scm (Lu & Song 2024, CIFAR-10 values)
    scm.sigma_data = 0.5
    scm.p_mean = -1.0  # training times t = arctan(exp(tau) / sigma_data), tau ~ N(p_mean, p_std^2)
    scm.p_std = 1.4
    scm.warmup_steps = 10_000  # tangent warm-up: its second term rises linearly over these steps
    scm.tangent_c = 0.1  # tangent normalisation g / (rms(g) + tangent_c)

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128  # global batch, split over all devices (and processes)
    training.grad_accum_steps = 1  # split each global batch into k micro-batches, one update (memory)
    training.dtype = "float32"  # U-Net compute dtype: float32 | bfloat16 (params, optimizer, EMA stay fp32)
    training.num_train_steps = 2000
    # > 0: also stop (checkpoint, final grid) at the first step past this many minutes of wall clock, counted
    # from the first step of this run (its compile included); a resumed run gets the budget again
    training.max_minutes = 0.0
    training.optimizer = "adam"  # adam | adamw
    training.learning_rate = 2e-3
    training.warmup_steps = 100  # linear warm-up from 0 to learning_rate
    # after the warm-up: constant | cosine (to 0 over lr_decay_steps, 0 = the rest of num_train_steps) |
    # inverse_sqrt (EDM2: learning_rate / sqrt(max(n / lr_decay_steps, 1)), needs lr_decay_steps > 0)
    training.lr_schedule = "constant"
    training.lr_decay_steps = 0
    training.adam_b1 = 0.9
    training.adam_b2 = 0.999
    training.adam_eps = 1e-8
    training.weight_decay = 0.0  # adamw only
    training.grad_clip_norm = 1.0  # global-norm clipping (0 = off)
    training.ema_decay = 0.999
    training.ema_warmup = True  # decay_n = min(ema_decay, (1 + n) / (10 + n)), as TF's num_updates
    # post-hoc EMA (EDM2): relative stds of power-function EMA profiles tracked besides (EDM2: (0.05, 0.10)),
    # snapshotted to <workdir>/ema_snapshots every ema_snapshot_every steps (0 = checkpoint_every; all kept,
    # each as large as the params times len(ema_stds)); then sampling.ema_std picks the EMA length after
    # training. () = off
    training.ema_stds = ()
    training.ema_snapshot_every = 0
    training.label_dropout = 0.1  # class-conditional models: P(label -> null label)
    training.log_every = 50  # host sync + metrics line every N steps
    training.checkpoint_every = 500
    training.sample_every = 1000  # sample grid PNG every N steps (and at the end); 0 = only at the end
    training.keep_checkpoints = 3
    training.eval_every = 0  # cheap FID (eval.train_fid_samples, EMA params) every N steps; 0 = off

    config.parallel = parallel = ml_collections.ConfigDict()
    parallel.num_devices = 0  # devices on the data axis of the mesh (0 = all visible devices)
    parallel.shard_params = False  # FSDP: shard params, EMA and optimizer state over the data axis
    parallel.shard_min_size = 16384  # ... only arrays with at least this many elements (others replicated)

    config.sampling = sampling = ml_collections.ConfigDict()
    # auto (ddpm family: ddpm; vp: dpm_solver++; edm: heun; flow: euler; meanflow, shortcut, consistency, consistency_flow, scm: jump) | ddpm (ancestral,
    # respaced when num_steps < T) | ddim (both: ddpm family only) | euler | euler_ancestral | heun (EDM
    # Alg. 1) | edm_stochastic (EDM Alg. 2: s_churn ...) | midpoint | dpm_solver++ (2M) | dpm_solver++_3m |
    # dpm_solver++_sde (2M SDE) | jump (a few-step family's own jump: meanflow, shortcut, consistency models)
    sampling.sampler = "auto"
    sampling.num_steps = 0  # sampler steps; 0 = all diffusion.num_timesteps for the ddpm family, 50 for vp
    #   and flow, 18 for edm (heun: 2 N - 1 network evaluations), 1 for meanflow, shortcut and the consistency families. The source documents use ddim with 20.
    sampling.spacing = "auto"  # ddpm family: leading | trailing | linspace | uniform | quad | logsnr (auto =
    #   linspace for ddpm, leading for ddim, logsnr otherwise); vp: uniform | logsnr | karras (auto logsnr);
    #   edm: karras | logsnr (auto karras); flow: uniform (auto; with diffusion.flow.shift)
    sampling.eta = 0.0  # ddim only: 0 = deterministic, 1 = ancestral (DDPM fixed_small over all T steps)
    sampling.sde_eta = 1.0  # euler_ancestral and dpm_solver++_sde: the noise of each step (1 = ancestral)
    sampling.s_churn = 0.0  # edm_stochastic: gamma = min(s_churn / N, sqrt(2) - 1) for sigma in [s_min, s_max]
    sampling.s_min = 0.0
    sampling.s_max = 1e6
    sampling.s_noise = 1.0
    sampling.set_alpha_to_one = True  # ddim / dpm_solver++: the last step ends at abar=1 (else at abar_0)
    sampling.labels = "auto"  # auto (all for a class-conditional model, else none) | none | all | 3,5,7
    #   (comma-separated class ids, cycled over the samples)
    sampling.guidance_scale = 1.0  # classifier-free guidance w: 1 = conditional, 0 = unconditional, >1 stronger
    sampling.guidance_interval = ()  # (lo, hi): guide only where lo < sigma / alpha <= hi (Kynkaanniemi et al.
    #   2024, e.g. (0.28, 5.42)); () = every step
    sampling.num_samples = 64
    sampling.batch_size = 256  # chunk size when generating many samples (guidance doubles the network batch)
    sampling.variance = "fixed_small"  # sampler ddpm only: fixed_small | fixed_large
    sampling.clip_x0 = True  # clip the predicted x0 to [-1, 1] at every step (eps recomputed from it)
    sampling.use_ema = True
    sampling.ema_std = 0.0  # > 0: use_ema reconstructs the post-hoc EMA of this relative std (EDM2; e.g. 0.05-0.2,
    #   at most 0.289) from the snapshots of training.ema_stds; 0 = the EMA of training.ema_decay
    sampling.save_pngs = False  # --mode=sample: also every sample as its own PNG in sample_<tag>/ (for pytorch-fid,
    #   clean-fid and other tools that read a folder)
    sampling.grid_sampler = "auto"  # the sample grids written during training: auto (dpm_solver++, seconds
    #   instead of minutes) | same (the sampler above) | any sampler name; --mode=sample uses the sampler above
    sampling.grid_num_steps = 20  # steps of grid_sampler (ignored with same)
    sampling.trajectory_every = 100  # trajectory figure: every N-th step, at most S/10 so short samplers
    #   still show ~10 frames (0 = no figure)

    # --mode=edit: use a trained model on images (docs/editing.md). The sampler is config.sampling's.
    config.edit = edit = ml_collections.ConfigDict()
    edit.task = "inpaint"  # inpaint | sdedit | restore | invert | interpolate
    edit.input = "dataset"  # dataset (the first images of data's test split) | a folder of PNG/JPEG files |
    #   an .npz (array "images", uint8 [N, H, W, C]) | an .npy; interpolate also takes "noise"
    edit.num_images = 8  # input images used (from the start of the input)
    edit.samples_per_image = 2  # results per input (inpaint, sdedit, restore)
    edit.method = "auto"  # inpaint: repaint | ddnm | dps (auto: repaint); restore: ddnm | dps (auto: ddnm,
    #   dps when edit.measurement_noise > 0)
    edit.mask = "center"  # inpaint, the region to fill: center | left | right | top | bottom | random |
    #   box:y0,x0,h,w | a PNG or .npy file of the image size (white / nonzero = fill)
    edit.operator = "super_resolution"  # restore: super_resolution | deblur_gaussian | deblur_box |
    #   colorization | denoise
    edit.operator_scale = 0.0  # super-resolution factor (default 4), Gaussian blur sigma (1.5), box size (3)
    edit.measurement_noise = 0.0  # restore: std of the noise added to the measurement, in [-1, 1] units
    edit.strength = 0.5  # sdedit: 0 returns the input, 1 an unconditional sample
    edit.jump_length = 10  # repaint: resampling jumps of this many sampler steps ...
    edit.jump_n_sample = 10  # ... this many times (1 = no resampling; RePaint's j = 10, r = 10); resampling
    #   needs a one-step sampler: sampling.sampler=auto runs euler_ancestral where its own is multistep (vp)
    edit.dps_scale = 1.0  # dps: step size zeta of the measurement gradient
    edit.interpolation_points = 8  # interpolate: images along each path (ends included)
    edit.labels = "auto"  # class-conditional models: auto (the input's labels from the dataset, else
    #   sampling.labels) | none | comma-separated ids; guidance is sampling.guidance_scale

    # --mode=eval and the training-time FID; docs/evaluation.md states the protocol.
    config.eval = ev = ml_collections.ConfigDict()
    ev.feature_extractor = "classifier"  # classifier (jaxdiff's own CNN) | inception (FID InceptionV3, see below)
    ev.inception_weights = ""  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or an .npz converted from it)
    ev.num_samples = 10000  # EMA samples for FID/KID (written next to the numbers); must exceed the feature dim
    ev.batch_size = 256  # samples / feature batches per compiled call
    ev.reference_split = "train"  # FID/KID reference statistics: features of this split, cached in the workdir
    ev.kid_subsets = 100  # KID: mean over this many random subset pairs (clean-fid / Binkowski et al.)
    ev.kid_subset_size = 1000  # ... each of this size (capped at the sample count)
    ev.bpd = True  # bits/dim (DDPM variational bound, all T steps) on the test split
    ev.bpd_num_images = 256  # images of the test split for bits/dim (0 = all of it, the paper protocol; each
    #   image costs all T network evaluations, so the quick default takes minutes on a CPU)
    ev.bpd_batch_size = 64
    ev.bpd_clip_x0 = False  # clip x0_hat to [-1, 1] inside the bound (DDPM's calc_bpd_loop does)
    ev.sampler = "auto"  # the sampler of eval's samples (FID, KID, conditional accuracy) and the training-time
    #   FID: auto (dpm_solver++, minutes) | same (config.sampling: the paper protocol, e.g. DDPM over 1000
    #   steps) | any sampler name
    ev.num_steps = 20  # steps of eval.sampler (ignored with same)
    ev.fid_guidance_scale = 1.0  # class-conditional models: FID/KID samples (balanced labels) use this w
    ev.guidance_scales = (0.0, 1.0, 3.0)  # conditional accuracy per classifier-free guidance scale w
    ev.samples_per_class = 100  # conditional accuracy: samples per class and scale
    ev.train_fid_samples = 1000  # samples of the cheap FID logged every training.eval_every steps
    ev.classifier_dir = ""  # where the feature classifier is cached ("" = <workdir>/eval)
    ev.classifier_ch = 32
    ev.classifier_features = 128  # penultimate width = classifier-FID feature dimension
    ev.classifier_steps = 3000
    ev.classifier_batch_size = 128
    ev.classifier_learning_rate = 2e-3
    return config
