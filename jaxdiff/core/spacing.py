"""Timestep spacings of the discrete DDPM chain: which table rows a sampler with fewer steps visits.

:func:`spaced_timesteps` is used by the ddpm family's grids (:mod:`jaxdiff.core.families`) and by its
chain samplers (:mod:`jaxdiff.core.ddpm_chain`).
"""

from __future__ import annotations

import numpy as np

SPACINGS = ("leading", "trailing", "linspace", "uniform", "quad", "logsnr")


def spaced_timesteps(num_timesteps: int, num_steps: int, spacing: str = "leading",
                     alphas_cumprod: np.ndarray | None = None) -> np.ndarray:
    """The descending table indices a sampler with ``num_steps`` visits out of ``T = num_timesteps``.

    ``leading``  (diffusers)   ``arange(S) * (T // S)``
    ``trailing`` (diffusers)   ``round(T - arange(S) * T / S) - 1``   (always starts at T - 1)
    ``linspace`` (diffusers)   ``round(linspace(0, T - 1, S))``      (improved-diffusion's respacing)
    ``uniform``  (DDIM paper)  ``range(0, T, T // S)``               (more than S steps if S does not divide T)
    ``quad``     (DDIM paper)  ``int(linspace(0, sqrt(0.8 T), S) ** 2)``
    ``logsnr``   (DPM-Solver)  the table index nearest (in log-SNR) to ``S`` points uniform in
                               ``lambda = log(sqrt(abar / (1 - abar)))`` from ``lambda_{T-1}`` to ``lambda_0``;
                               needs ``alphas_cumprod``; a repeat moves one index down. DPM-Solver's
                               recommendation, and far better than the others for it at 10-20 steps.
                               Always starts at T - 1; with zero terminal SNR (``lambda_{T-1} = -inf``)
                               the points run from ``lambda_{T-2}`` and the first stays at T - 1.
    ``leading``, ``uniform`` and ``quad`` start below ``T - 1`` by their definitions (at ``(S - 1) T // S``
    and ``0.8 T``): with few steps the sampler then starts from pure noise at a level that still holds
    signal (``trailing``, ``linspace`` and ``logsnr`` start at ``T - 1``).
    Raises ``ValueError`` for ``S`` outside ``[1, T]``, an unknown spacing, a spacing that repeats a
    step (``quad`` with many steps over a short schedule), or a single step at ``t = 0``.
    """
    T, S = int(num_timesteps), int(num_steps)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if not 1 <= S <= T:
        raise ValueError(f"num_steps={S} must be between 1 and num_timesteps={T}")
    if spacing == "leading":
        seq = np.arange(S) * (T // S)
    elif spacing == "trailing":
        seq = np.round(T - np.arange(S) * (T / S)).astype(np.int64) - 1
    elif spacing == "linspace":
        seq = np.round(np.linspace(0, T - 1, S)).astype(np.int64)
    elif spacing == "uniform":
        seq = np.arange(0, T, T // S)
    elif spacing == "quad":
        seq = (np.linspace(0, np.sqrt(0.8 * T), S) ** 2).astype(np.int64)
    else:  # logsnr
        if alphas_cumprod is None:
            raise ValueError("spacing='logsnr' needs the schedule's alphas_cumprod")
        with np.errstate(divide="ignore"):
            lam = 0.5 * np.log(alphas_cumprod / (1.0 - alphas_cumprod))  # decreasing in t; -inf at SNR 0
        start = lam[T - 1] if np.isfinite(lam[T - 1]) or T == 1 else lam[T - 2]
        grid = np.linspace(start, lam[0], S)
        nearest = np.abs(lam[None, :] - grid[:, None]).argmin(axis=1)  # descending, may repeat
        seq = np.empty(S, np.int64)
        for k in range(S):  # start at T - 1, keep strictly decreasing, leave room for the remaining steps
            seq[k] = max(min(nearest[k], seq[k - 1] - 1), S - 1 - k) if k else T - 1
    seq = np.sort(np.asarray(seq, np.int64))[::-1]
    if S == 1 and T > 1 and seq[0] == 0:
        raise ValueError(f"spacing={spacing!r} with num_steps=1 evaluates only t=0, the data end of the "
                         "chain, from pure noise; use trailing or logsnr (they start at T - 1)")
    if len(np.unique(seq)) != len(seq) or seq[0] >= T or seq[-1] < 0:
        raise ValueError(f"spacing={spacing!r} with num_steps={S} over {T} timesteps repeats "
                         "timesteps; use fewer steps or another spacing")
    return seq.astype(np.int32)

