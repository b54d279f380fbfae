"""Pictures: sample grids, loss curves and denoising trajectories (PNG, via matplotlib/Pillow)."""

from __future__ import annotations

import io
import json
import math

import numpy as np

from jaxdiff.common import paths


def to_uint8(images) -> np.ndarray:
    """Images in [-1, 1] -> uint8 by ``round((clip(x, -1, 1) + 1) * 127.5)``."""
    return np.rint((np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile uint8 ``[N, H, W, C]`` images into one ``[rows*(H+pad)+pad, ncol*(W+pad)+pad, C]`` image."""
    n, h, w, c = images.shape
    ncol = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / ncol))
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = images[i]
    return grid


def save_image_grid(images, path: paths.PathLike, nrow: int | None = None, scale: int = 0) -> np.ndarray:
    """Save images in [-1, 1] (``[N, H, W, C]``) as one PNG grid; small images are enlarged
    (nearest neighbour) to about 64 pixels so that a person can see them. Returns the grid."""
    grid = make_grid(to_uint8(images), nrow)
    paths.save_pil_image(_enlarged(grid, np.asarray(images).shape[1], scale), path)
    return grid


def read_metrics(path: paths.PathLike) -> list[dict]:
    """The JSON lines of a ``metrics.jsonl`` file; a line cut short by a killed process is skipped."""
    rows = []
    for line in paths.as_path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def save_loss_curve(metrics_path: paths.PathLike, path: paths.PathLike) -> None:
    """Plot training loss against step from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set(xlabel="step", ylabel="training loss (mean over log interval)", yscale="log",
           title="jaxdiff training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.save_figure(fig, path, dpi=120)
    plt.close(fig)


def save_trajectory(traj_xt, traj_x0, timesteps, path: paths.PathLike, max_images: int = 8,
                    time_name: str = "t") -> None:
    """Denoising trajectory figure: for up to ``max_images`` samples, a row of ``x_t`` and a row of
    the predicted ``x0`` at each recorded step (columns labelled with the time: integer table
    indices as the paper's ``t = index + 1``, continuous times as ``time_name=value``; -1 is the end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xt, x0 = to_uint8(traj_xt), to_uint8(traj_x0)
    frames, n = xt.shape[0], min(xt.shape[1], max_images)
    fig, axes = plt.subplots(2 * n, frames, figsize=(frames * 0.9, 2 * n * 0.9), squeeze=False)
    for j in range(frames):
        for i in range(n):
            for r, imgs, label in ((2 * i, xt, "x_t"), (2 * i + 1, x0, "x0_hat")):
                ax = axes[r, j]
                img = imgs[j, i]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255,
                          interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(label, fontsize=6)
        t = timesteps[j]
        label = f"t={int(t) + 1}" if np.issubdtype(np.asarray(timesteps).dtype, np.integer) else f"{time_name}={t:.3g}"
        axes[0, j].set_title("end" if t < 0 else label, fontsize=6)
    fig.tight_layout(pad=0.1)
    paths.save_figure(fig, path, dpi=100)
    plt.close(fig)


def save_class_grid(images, labels, path: paths.PathLike, per_class: int = 10, class_names=None) -> np.ndarray:
    """Per-class grid: one row per class present in ``labels`` (ascending), holding up to
    ``per_class`` of that class's images (``[N, H, W, C]`` in [-1, 1]); short rows are left blank.
    Rows are labelled with the class id (or ``class_names[id]``). Returns the uint8 grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs, labels = to_uint8(images), np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) == 0:
        raise ValueError("save_class_grid needs at least one labelled image")
    cols = max(1, min(per_class, max(int(np.sum(labels == c)) for c in classes)))
    tiles = np.full((len(classes) * cols,) + imgs.shape[1:], 255, np.uint8)
    for r, c in enumerate(classes):
        members = imgs[labels == c][:cols]
        tiles[r * cols:r * cols + len(members)] = members
    grid = make_grid(tiles, cols)
    h = imgs.shape[1]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * cols, 0.3 + 0.6 * len(classes)))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_yticks([1 + r * (h + 1) + h / 2 for r in range(len(classes))])
    ax.set_yticklabels([str(class_names[c]) if class_names is not None else f"class {c}" for c in classes],
                       fontsize=7)
    ax.set_xticks([])
    paths.save_figure(fig, path, dpi=100, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    return grid


def _enlarged(grid: np.ndarray, height: int, scale: int = 0):
    """A uint8 grid as a PIL image enlarged (nearest neighbour) so tiles of ``height`` are ~64 pixels."""
    from PIL import Image

    scale = scale or max(1, 64 // height)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def save_columns(columns, path: paths.PathLike, titles=None) -> np.ndarray:
    """A before / after figure: ``columns`` is a list of image arrays ``[N, H, W, C]`` in [-1, 1]
    (e.g. input, degraded input, results); row ``i`` shows image ``i`` of every column, titled with
    ``titles`` when given. Returns the uint8 grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [to_uint8(c) for c in columns]
    n, h = columns[0].shape[0], columns[0].shape[1]
    tiles = np.stack(columns, axis=1).reshape((-1,) + columns[0].shape[1:])
    grid = make_grid(tiles, len(columns))
    fig, ax = plt.subplots(figsize=(0.3 + 0.8 * len(columns), 0.3 + 0.8 * n))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks([]), ax.set_xticks([1 + k * (h + 1) + h / 2 for k in range(len(columns))])
    ax.set_xticklabels(list(titles) if titles is not None else [], fontsize=6, rotation=30)
    ax.tick_params(length=0)
    fig.tight_layout(pad=0.2)
    paths.save_figure(fig, path, dpi=150)
    plt.close(fig)
    return grid


def save_image_folder(images, directory: paths.PathLike, start: int = 0) -> list[str]:
    """Each image of ``[N, H, W, C]`` in [-1, 1] as its own PNG ``directory/000000.png, ...`` (numbered
    from ``start``), at its own resolution: a folder that external FID tools (pytorch-fid, clean-fid)
    read. Returns the file names."""
    from PIL import Image

    directory = paths.as_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i, img in enumerate(to_uint8(images)):
        name = f"{start + i:06d}.png"
        paths.save_pil_image(Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img), directory / name)
        names.append(name)
    return names


def save_trajectory_gif(frames, path: paths.PathLike, max_images: int = 16, frame_ms: int = 120,
                        hold_ms: int = 1500) -> None:
    """An animated GIF of a denoising trajectory: ``frames [F, N, H, W, C]`` in [-1, 1] (``x_t`` or the
    predicted ``x0`` of each recorded step), each frame a grid of the first ``max_images``; the last
    frame is held for ``hold_ms``."""
    frames = to_uint8(frames)[:, :max_images]
    if frames.ndim != 5 or len(frames) < 1:
        raise ValueError(f"a trajectory GIF needs frames [F, N, H, W, C], got shape {frames.shape}")
    images = [_enlarged(make_grid(f), f.shape[1]).convert("P" if f.shape[-1] == 3 else "L") for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=[frame_ms] * (len(images) - 1) + [hold_ms])
    paths.write_bytes(path, buf.getvalue())
