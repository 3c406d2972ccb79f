"""Figures of the paper, for any TKN: attention windows (Fig. 4), activations (Fig. 1), the L2/β trade-off (Fig. 5).

matplotlib is an optional dependency (``pip install 'tkn[plots]'``); it is
imported lazily, with the headless ``Agg`` backend, only when a figure is made.

* :func:`attention_figure`: one row per target layer. Left, a mosaic of the
  layer's channel windows ``F_att`` (one tile per output channel, sampled on
  the layer's output map) with each channel's ROI drawn as a rectangle; right,
  the ROI coverage (how many channels compute each pixel). The row title gives
  the map size and the layer's MACs over its ROIs against the dense cost.
* :func:`activation_figure`: the same rows for one input sample: each channel's
  attentively regularised activation (the target layer's output, paper Fig. 1
  (d)) with its ROI, and the sample with the layer's mean window overlaid.
* :func:`sweep_figure`: test error against relative speed-up (dense baseline
  MACs / model MACs), one curve per β, the baseline marked (paper Fig. 5).
* :func:`score_map_figure`: a classifier applied by sliding window over a
  larger image (:func:`tkn.rescale.score_map`), per-class probability maps.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tkn.convert import target_layers
from tkn.flops import format_count
from tkn.io import atomic_write
from tkn.validate import positive_int
from tkn.summary import example_input, layer_row, target_geometry, totals

__all__ = [
    "require_matplotlib",
    "mosaic",
    "attention_figure",
    "activation_figure",
    "sweep_figure",
    "score_map_figure",
    "save_figure",
]


def require_matplotlib():
    """``matplotlib.pyplot`` with the ``Agg`` backend, or ``RuntimeError`` saying how to install it."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise RuntimeError("plotting needs matplotlib: pip install 'tkn[plots]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def mosaic(maps: Tensor, columns: int | None = None, gap: int = 1) -> tuple[Tensor, list[tuple[int, int]]]:
    """Tile ``(C, H, W)`` maps into one image separated by ``gap`` NaN pixels.

    Returns:
        ``(image, offsets)``: a float64 ``(rows*(H+gap)-gap, cols*(W+gap)-gap)``
        image (NaN between tiles, rendered as background) and the ``(y, x)``
        top-left offset of each tile, in channel order, row-major.
    """
    if not isinstance(maps, Tensor) or maps.dim() != 3 or maps.shape[0] < 1:
        raise ValueError(f"maps must be a non-empty (C, H, W) tensor, got {getattr(maps, 'shape', maps)!r}")
    c, h, w = maps.shape
    cols = columns or max(1, math.ceil(math.sqrt(c * h / w)))
    cols = min(cols, c)
    rows = math.ceil(c / cols)
    image = torch.full((rows * (h + gap) - gap, cols * (w + gap) - gap), float("nan"), dtype=torch.float64)
    offsets = []
    for i in range(c):
        oy, ox = (i // cols) * (h + gap), (i % cols) * (w + gap)
        image[oy:oy + h, ox:ox + w] = maps[i].detach().to(torch.float64).cpu()
        offsets.append((oy, ox))
    return image, offsets


def _draw_rois(ax, rois: Tensor, offsets: Sequence[tuple[int, int]], color: str) -> None:
    from matplotlib.patches import Rectangle

    for (y0, y1, x0, x1), (oy, ox) in zip(rois.tolist(), offsets):
        if y1 > y0 and x1 > x0:
            ax.add_patch(Rectangle((ox + x0 - 0.5, oy + y0 - 0.5), x1 - x0, y1 - y0,
                                   fill=False, edgecolor=color, linewidth=0.8))


def _columns(channels: int) -> int:
    """Tiles per mosaic row: about 2.5 times as many columns as rows (the mosaic panel is wide)."""
    return max(1, min(channels, math.ceil(math.sqrt(2.5 * channels))))


def _coverage(rois: Tensor, h: int, w: int) -> Tensor:
    from tkn.functional import roi_mask

    return roi_mask(rois, h, w).sum(0).to(torch.float64)


def _select_layers(model: nn.Module, layers: Sequence[str] | None):
    pairs = target_layers(model)
    if not pairs:
        raise ValueError("the model has no target layers (tkn.TargetConv2d): nothing to show")
    if layers is None:
        return pairs
    names = [n for n, _ in pairs]
    unknown = [n for n in layers if n not in names]
    if unknown:
        raise ValueError(f"layers {unknown} are not target layers of the model; choose from {names}")
    return [(n, layer) for n, layer in pairs if n in set(layers)]


def _caption(name: str, row: dict, shown: int) -> str:
    h, w = row["output_size"]
    more = f" (first {shown} shown)" if shown < row["out_channels"] else ""
    return (f"{name or '<model>'}\n{row['out_channels']} channels{more}, {h}x{w} map, "
            f"ROI MACs {format_count(row['macs_roi'])} of {format_count(row['macs_dense'])} "
            f"({row['speedup']:.2f}x fewer), mean ROI {100 * row['roi_area_mean']:.0f}% of the map")


def _layer_rows(plt, n: int, width: float = 11.0, height: float = 2.9):
    """A figure with one row per layer: ``(tiles, tiles colour bar, side panel, side colour bar)`` axes.

    A fixed grid (no layout solver): drawing stays fast for deep models.
    """
    total = height * n + 1.3
    fig = plt.figure(figsize=(width, total))
    grid = fig.add_gridspec(n, 4, width_ratios=[3, 0.07, 1, 0.07], left=0.01, right=0.95,
                            top=1 - 0.9 / total, bottom=0.45 / total, hspace=0.5, wspace=0.22)
    return fig, [tuple(fig.add_subplot(grid[i, j]) for j in range(4)) for i in range(n)]


def attention_figure(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    layers: Sequence[str] | None = None,
    max_channels: int = 64,
    title: str | None = None,
):
    """Paper Fig. 4 for ``model``: every target layer's windows ``F_att`` and ROIs.

    Args:
        model: a module with :class:`~tkn.layers.TargetConv2d` layers.
        input_size: ``(C, H, W)`` or ``(H, W)`` of the model's input; one
            forward pass on an example of this size finds each layer's map.
        layers: qualified names of the target layers to show (default: all).
        max_channels: at most this many channels per layer (the first ones).
        title: figure title.

    Returns:
        A ``matplotlib.figure.Figure`` (save it with :func:`save_figure`).
    """
    plt = require_matplotlib()
    positive_int("max_channels", max_channels)
    pairs = _select_layers(model, layers)
    geometry = target_geometry(model, example_input(model, input_size))
    pairs = [(n, layer) for n, layer in pairs if n in geometry]
    fig, axes = _layer_rows(plt, len(pairs))
    rows = []
    for (name, layer), (ax_tiles, cax_tiles, ax_cov, cax_cov) in zip(pairs, axes):
        in_hw, (h, w) = geometry[name]
        row = layer_row(name, layer, in_hw, (h, w))
        rows.append(row)
        with torch.no_grad():
            att = layer.attention(h, w)[:max_channels]
            roi = layer.rois(h, w)
        image, offsets = mosaic(att, _columns(att.shape[0]))
        im = ax_tiles.imshow(image.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        _draw_rois(ax_tiles, roi[: len(offsets)], offsets, "red")
        ax_tiles.set_title(_caption(name, row, len(offsets)), fontsize=8, loc="left")
        ax_tiles.set_axis_off()
        fig.colorbar(im, cax=cax_tiles)
        cax_tiles.set_title("F_att", fontsize=8)
        cov = ax_cov.imshow(_coverage(roi, h, w).numpy(), cmap="magma", vmin=0, vmax=layer.out_channels,
                            interpolation="nearest")
        ax_cov.set_xlabel("ROI coverage: channels computing each pixel", fontsize=8)
        ax_cov.set_xticks([])
        ax_cov.set_yticks([])
        fig.colorbar(cov, cax=cax_cov)
    fig.suptitle(title or "attention windows F_att and ROIs (red) per target layer", fontsize=11,
                 y=1 - 0.25 / fig.get_figheight(), va="top")
    _footer_text(fig, rows)
    return fig


def _footer_text(fig, rows: Sequence[dict]) -> None:
    t = totals(rows)
    fig.text(
        0.5, 0.15 / fig.get_figheight(),
        f"shown target layers: {t['channels']} channels, {format_count(t['macs_roi'])} of "
        f"{format_count(t['macs_dense'])} MACs over ROIs ({t['speedup']:.2f}x fewer than dense)",
        ha="center", va="bottom", fontsize=9,
    )


def activation_figure(
    model: nn.Module,
    image: Tensor,
    *,
    layers: Sequence[str] | None = None,
    max_channels: int = 64,
    title: str | None = None,
):
    """Paper Fig. 1 (d) for one sample: each channel's attentively regularised activation and ROI.

    Args:
        model: a module with :class:`~tkn.layers.TargetConv2d` layers.
        image: one sample ``(C, H, W)`` (or ``(1, C, H, W)``), values as the model expects.
        layers, max_channels, title: as in :func:`attention_figure`.

    Each row shows a layer's output channels (the convolution times its
    window, zero outside its ROI: exactly what the next layer sees), on a
    symmetric colour scale, and the sample with the layer's mean window
    (interpolated from its map to the input size, scaled to a maximum of 1)
    overlaid.
    """
    plt = require_matplotlib()
    if not isinstance(image, Tensor) or image.dim() not in (3, 4) or (image.dim() == 4 and image.shape[0] != 1):
        raise ValueError(
            f"image must be a (C, H, W) or (1, C, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}"
        )
    positive_int("max_channels", max_channels)
    x = (image if image.dim() == 4 else image[None]).float()
    pairs = _select_layers(model, layers)
    outputs: dict[str, tuple[Tensor, tuple[int, int]]] = {}

    def hook_for(name: str):
        def record(module, args, output):
            outputs.setdefault(name, (output[0].detach(), tuple(args[0].shape[-2:])))
        return record

    hooks = [layer.register_forward_hook(hook_for(n)) for n, layer in pairs]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            logits = model(x)
    finally:
        model.train(was_training)
        for hk in hooks:
            hk.remove()
    pairs = [(n, layer) for n, layer in pairs if n in outputs]
    fig, axes = _layer_rows(plt, len(pairs))
    sample = x[0].mean(0).cpu().numpy() if x.shape[1] != 3 else x[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    rows = []
    for (name, layer), (ax_tiles, cax_tiles, ax_img, cax_img) in zip(pairs, axes):
        act, in_hw = outputs[name]
        h, w = act.shape[-2:]
        row = layer_row(name, layer, in_hw, (h, w))
        rows.append(row)
        with torch.no_grad():
            roi = layer.rois(h, w)
            mean_att = layer.attention(h, w).mean(0)
        tiles, offsets = mosaic(act[:max_channels], _columns(min(max_channels, act.shape[0])))
        limit = float(act[:max_channels].abs().max()) or 1.0
        im = ax_tiles.imshow(tiles.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        _draw_rois(ax_tiles, roi[: len(offsets)], offsets, "black")
        ax_tiles.set_title(_caption(name, row, len(offsets)), fontsize=8, loc="left")
        ax_tiles.set_axis_off()
        fig.colorbar(im, cax=cax_tiles)
        cax_tiles.set_title("activation", fontsize=8)
        overlay = F.interpolate(mean_att[None, None], size=tuple(x.shape[-2:]), mode="bilinear",
                                align_corners=False)[0, 0]
        overlay = overlay / overlay.max().clamp_min(1e-12)
        ax_img.imshow(sample, cmap="gray", interpolation="nearest")
        ov = ax_img.imshow(overlay.numpy(), cmap="inferno", alpha=0.45, vmin=0.0, vmax=1.0)
        ax_img.set_xlabel("sample + the layer's mean F_att (scaled to max 1)", fontsize=8)
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        fig.colorbar(ov, cax=cax_img)
    head = title or "attentively regularised activations (ROIs in black) per target layer"
    if logits.dim() == 2 and logits.shape[1] > 1:
        head += f" — predicted class {int(logits[0].argmax())}"
    fig.suptitle(head, fontsize=11, y=1 - 0.25 / fig.get_figheight(), va="top")
    _footer_text(fig, rows)
    return fig


def sweep_figure(rows: Sequence[dict], *, title: str | None = None, ylabel: str = "test error (%)"):
    """Paper Fig. 5: test error against relative speed-up factor, one curve per β.

    Args:
        rows: dicts with ``kind`` (``"tkn"``, ``"budget"`` or ``"baseline"``), ``test_error``
            (plotted as given, e.g. in %), ``speedup`` (baseline MACs / model
            MACs), for TKN rows ``l2`` and ``beta`` and for budget rows
            ``target_speedup``, as written by ``tkn sweep``. Budget rows make one curve.
            Rows whose error or speed-up is missing (``None``) are skipped.
        title: figure title.
        ylabel: label of the error axis.
    """
    plt = require_matplotlib()
    for key in ("kind", "test_error", "speedup"):
        missing = [i for i, r in enumerate(rows) if key not in r]
        if missing:
            raise ValueError(f"sweep rows {missing} lack the {key!r} column")
    rows = [r for r in rows if r["test_error"] is not None and r["speedup"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    tkn_rows = [r for r in rows if r["kind"] == "tkn"]
    for beta in sorted({r["beta"] for r in tkn_rows}):
        pts = sorted((r for r in tkn_rows if r["beta"] == beta), key=lambda r: r["speedup"])
        xs = [r["speedup"] for r in pts]
        ys = [r["test_error"] for r in pts]
        (line,) = ax.plot(xs, ys, "o-", label=f"TKN, β = {beta:g}")
        for r, xv, yv in zip(pts, xs, ys):
            ax.annotate(f"L2={r['l2']:g}", (xv, yv), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=line.get_color())
    budget_rows = sorted((r for r in rows if r["kind"] == "budget"), key=lambda r: r["speedup"])
    if budget_rows:
        (line,) = ax.plot([r["speedup"] for r in budget_rows], [r["test_error"] for r in budget_rows], "s-",
                          label="TKN trained to a speed-up budget")
        for r in budget_rows:
            ax.annotate(f"R={r['target_speedup']:g}", (r["speedup"], r["test_error"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color=line.get_color())
    for r in (r for r in rows if r["kind"] == "baseline"):
        ax.axhline(r["test_error"], color="gray", linestyle="--", linewidth=0.8)
        ax.plot([r["speedup"]], [r["test_error"]], "k*", markersize=12,
                label=f"dense baseline ({r.get('model', 'CNN')})")
    ax.set_xlabel("relative speed-up factor (baseline MACs / model MACs)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    ax.set_title(title or "effect of L2 and β on error and efficiency", fontsize=10)
    return fig


def score_map_figure(
    image: Tensor,
    scores: Tensor,
    window_size,
    stride,
    *,
    classes: Sequence[int] | None = None,
    title: str | None = None,
):
    """The sliding-window score map of :func:`tkn.rescale.score_map` next to the image it was computed on.

    Args:
        image: ``(C, H, W)`` (or ``(1, C, H, W)``) the large image.
        scores: ``(K, ny, nx)`` logits from :func:`tkn.rescale.score_map`.
        window_size, stride: as passed to ``score_map`` (int or pair).
        classes: classes to map (default: the 3 with the highest peak probability).
        title: figure title.

    Each class panel shows the softmax probability of that class for the
    window whose top-left corner is at each grid position (drawn at the
    window's top-left pixel); the image panel outlines the best window of
    each mapped class.
    """
    from matplotlib.patches import Rectangle

    plt = require_matplotlib()
    x = image[0] if image.dim() == 4 else image
    if scores.dim() != 3:
        raise ValueError(f"scores must be (K, ny, nx), got shape {tuple(scores.shape)}")
    wh, ww = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
    sy, sx = (stride, stride) if isinstance(stride, int) else tuple(stride)
    prob = scores.detach().double().softmax(0)
    if classes is None:
        classes = prob.flatten(1).max(1).values.argsort(descending=True)[:3].tolist()
    k = len(classes)
    fig, axes = plt.subplots(1, k + 1, figsize=(3.2 * (k + 1), 3.6), squeeze=False)
    axes = axes[0]
    shown = x.mean(0) if x.shape[0] != 3 else x.permute(1, 2, 0)
    axes[0].imshow(shown.cpu().numpy(), cmap="gray", interpolation="nearest")
    axes[0].set_title(f"image {x.shape[-2]}x{x.shape[-1]}, window {wh}x{ww}, stride {sy}x{sx}", fontsize=8)
    ny, nx = prob.shape[1:]
    extent = (-0.5, (nx - 1) * sx + 0.5, (ny - 1) * sy + 0.5, -0.5)
    for ax, c in zip(axes[1:], classes):
        im = ax.imshow(prob[c].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, extent=extent, interpolation="nearest")
        i, j = divmod(int(prob[c].argmax()), nx)
        ax.set_title(f"P(class {c}) by window position\nbest at (y={i * sy}, x={j * sx}): {prob[c, i, j]:.2f}",
                     fontsize=8)
        axes[0].add_patch(Rectangle((j * sx - 0.5, i * sy - 0.5), ww, wh, fill=False, linewidth=1.2,
                                    edgecolor=plt.cm.tab10(classes.index(c) % 10)))
        axes[0].annotate(str(c), (j * sx, i * sy), color=plt.cm.tab10(classes.index(c) % 10), fontsize=9,
                         va="top", xytext=(2, -2), textcoords="offset points")
        fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "classifier applied by sliding window (tkn.rescale.score_map)", fontsize=10)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save ``fig`` to ``path`` atomically (:func:`tkn.io.atomic_write`; format from the suffix; parents
    created) and close it."""
    plt = require_matplotlib()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise ValueError(f"figure path must end in .png, .pdf, .svg or .jpg, got {str(path)!r}")
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format=suffix[1:]))
    finally:
        plt.close(fig)
    return path


def frontier_figure(rows: Sequence[dict], timings: Sequence[tuple[str, int]], *, title: str | None = None,
                    ylabel: str = "test error (%)"):
    """Test error against measured time per image: dense widths one curve, TKN budgets another (``tkn frontier``),
    and one more curve per narrower TKN width (composites).

    One panel per entry of ``timings``. Each point is annotated with its width
    (``w=0.5``), budget (``R=8``) or both, and its MACs.

    Args:
        rows: dicts with ``kind`` (``"dense"`` or ``"tkn"``), ``width``, ``target_speedup``,
            ``test_error``, ``macs`` and the timing columns, as written by ``tkn frontier`` (its rows, or
            its summary over seeds with ``test_error`` the mean: a ``test_error_std`` draws error bars).
            A latency budget (``budget``/``latency_batch``, or those of the row's ``config``) is
            labelled with its batch (``R=4@b64``). Rows whose error is missing (``None``) are skipped.
        timings: ``(column, batch)`` pairs: ``row[column]`` is seconds per batch of ``batch``
            images; the panel's x axis is milliseconds per image.
        title: figure title.
        ylabel: label of the error axes.
    """
    plt = require_matplotlib()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if not timings:
        raise ValueError("frontier_figure needs at least one (column, batch) timing")
    for key in ("kind", "test_error", "macs", *(column for column, _ in timings)):
        missing = [i for i, r in enumerate(rows) if key not in r]
        if missing:
            raise ValueError(f"frontier rows {missing} lack the {key!r} column")
    rows = [r for r in rows if r["test_error"] is not None]
    fig, axes = plt.subplots(1, len(timings), figsize=(6.0 * len(timings), 4.6), layout="constrained", squeeze=False)
    def budget(r: dict) -> str:  # a latency budget names the batch it is measured at
        batch = r.get("latency_batch") or (r.get("config") or {}).get("latency_batch")
        latency = r.get("budget", (r.get("config") or {}).get("budget")) == "latency"
        return f"R={r['target_speedup']:g}" + (f"@b{batch}" if latency and batch else "")

    styles = [("dense", None, "o-", "dense, narrower (width w)", lambda r: f"w={r['width']:g}"),
              ("tkn", 1, "s-", "TKN, speed-up budget R", budget)]
    for w in sorted({float(r.get("width", 1)) for r in rows if r["kind"] == "tkn"} - {1.0}, reverse=True):
        styles.append(("tkn", w, "^-", f"TKN at width {w:g}, budget R over its width",
                       lambda r: f"w={r['width']:g} {budget(r)}"))
    for ax, (column, batch) in zip(axes[0], timings):
        for kind, width, marker, label, name in styles:
            pts = sorted((r for r in rows if r["kind"] == kind
                          and (width is None or float(r.get("width", 1)) == width)), key=lambda r: r[column])
            if not pts:
                continue
            xs = [1e3 * r[column] / batch for r in pts]
            (line,) = ax.plot(xs, [r["test_error"] for r in pts], marker, label=label)
            if any(r.get("test_error_std") for r in pts):
                ax.errorbar(xs, [r["test_error"] for r in pts], yerr=[r.get("test_error_std") or 0 for r in pts],
                            fmt="none", ecolor=line.get_color(), capsize=3, alpha=0.7)
            for r, xv in zip(pts, xs):
                ax.annotate(f"{name(r)}\n{format_count(r['macs'])} MACs", (xv, r["test_error"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7, color=line.get_color())
        what = "latency" if batch == 1 else "time per image"
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"measured {what} at batch {batch} (ms per image, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if rows:
            ax.legend(fontsize=8)
    fig.suptitle(title or "test error against measured time", fontsize=10)
    _separate_labels(fig, [ax.texts for ax in axes[0]])
    return fig


def _separate_labels(fig, panels: Sequence[Sequence]) -> None:
    """Move annotations down (in steps of their own height) until none overlaps one placed before it in its panel:
    points close on the plot (two budgets at nearly the same time and error) keep readable labels."""
    fig.canvas.draw()  # lays the figure out once: the text extents are final
    renderer = fig.canvas.get_renderer()
    for texts in panels:
        placed = []
        for t in sorted(texts, key=lambda t: -t.get_window_extent(renderer).y0):
            for _ in range(2 * len(texts)):
                box = t.get_window_extent(renderer)
                if not any(box.overlaps(other) for other in placed):
                    break
                dx, dy = t.xyann
                t.xyann = (dx, dy - box.height * 72.0 / fig.dpi - 1.0)
            placed.append(t.get_window_extent(renderer))
