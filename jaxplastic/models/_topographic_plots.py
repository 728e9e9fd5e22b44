"""Figures of a topographic-map run (matplotlib, Agg backend, PNG files).

Every function takes plain numpy data (as :mod:`jaxplastic.models._topomap_cli` assembles it
from :func:`~jaxplastic.models.run_topographic`) and writes one PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "plot_degrees",
    "plot_displacement",
    "plot_map_quality",
    "plot_receptive_fields",
    "plot_rewiring",
]

PROJECTIONS = (("ff", "feed-forward"), ("lat", "lateral"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_displacement(
    path: Path,
    maps: dict[str, dict[str, dict[str, np.ndarray]]],
    kernels: dict[str, tuple[float, float]],
) -> Path:
    """Connection probability and mean weight against displacement, initial vs final.

    Args:
        path: output PNG.
        maps: ``maps[time][projection]`` for time in ``("initial", "final")`` and projection in
            ``("ff", "lat")``: the dict of :func:`~jaxplastic.models.displacement_maps`.
        kernels: ``{projection: (p_peak, sigma)}`` of the formation kernel.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(2, 5, figsize=(17, 6.6), constrained_layout=True)
    for row, (proj, label) in enumerate(PROJECTIONS):
        vmax_p = max(np.nanmax(maps[t][proj]["probability"]) for t in ("initial", "final"))
        vmax_w = max(np.nanmax(maps[t][proj]["mean_weight"]) for t in ("initial", "final"))
        for col, (time, key, vmax, name) in enumerate(
            (
                ("initial", "probability", vmax_p, "connection probability"),
                ("final", "probability", vmax_p, "connection probability"),
                ("initial", "mean_weight", vmax_w, "mean weight (uS)"),
                ("final", "mean_weight", vmax_w, "mean weight (uS)"),
            )
        ):
            ax = axes[row, col]
            data = maps[time][proj]
            r = data["offsets"]
            image = ax.imshow(
                np.ma.masked_invalid(data[key]),
                origin="lower",
                extent=(r[0] - 0.5, r[-1] + 0.5, r[0] - 0.5, r[-1] + 0.5),
                vmin=0.0,
                vmax=vmax,
                cmap="viridis",
            )
            fig.colorbar(image, ax=ax, shrink=0.8, label=name)
            ax.set_title(f"{label}: {time}")
            ax.set_xlabel("x displacement")
            ax.set_ylabel("y displacement")
        ax = axes[row, 4]
        p_peak, sigma = kernels[proj]
        for time, style in (("initial", "o--"), ("final", "s-")):
            data = maps[time][proj]
            ax.plot(data["radial_distance"], data["radial_probability"], style, label=time)
        d = np.linspace(0.0, maps["final"][proj]["radial_distance"][-1], 200)
        ax.plot(d, p_peak * np.exp(-(d**2) / (2 * sigma**2)), "k:", label="p(d) formation")
        ax.set_xlabel("distance")
        ax.set_ylabel("connection probability")
        ax.set_title(f"{label}: radial profile")
        ax.set_xlim(0, min(d[-1], 4 * sigma + 2))
        ax2 = ax.twinx()
        for time, style in (("initial", "x--"), ("final", "+-")):
            data = maps[time][proj]
            ax2.plot(
                data["radial_distance"], data["radial_weight"], style, color="tab:red", alpha=0.6
            )
        ax2.set_ylabel("mean weight (uS, red)", color="tab:red")
        ax2.set_ylim(0.0, 0.21)
        ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def _band(ax, times, values, label, style="-"):
    values = np.asarray(values, dtype=float)  # [seeds, times]
    mean = values.mean(axis=0)
    line = ax.plot(times, mean, style, label=label)[0]
    if values.shape[0] > 1:
        sd = values.std(axis=0)
        ax.fill_between(times, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
    return line


def plot_degrees(
    path: Path,
    times: np.ndarray,
    series: dict[str, np.ndarray],
    expected: dict[str, float],
) -> Path:
    """In- and out-degree over time (mean over neurons; band: sd over neurons) against K.

    Args:
        path: output PNG.
        times: ``[records]`` record times (s).
        series: ``{f"{kind}_degree_{proj}_{stat}": [seeds, records]}`` for kind in
            ``("in", "out")``, proj in ``("ff", "lat")``, stat in ``("mean", "sd")``.
        expected: ``{projection: K}`` the expected degree of the initial rule.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    for ax, (proj, label) in zip(axes, PROJECTIONS, strict=True):
        for kind, style in (("in", "-"), ("out", "--")):
            mean = np.asarray(series[f"{kind}_degree_{proj}_mean"], float).mean(axis=0)
            sd = np.asarray(series[f"{kind}_degree_{proj}_sd"], float).mean(axis=0)
            line = ax.plot(times, mean, style, label=f"{kind}-degree (mean +- sd over neurons)")[0]
            ax.fill_between(times, mean - sd, mean + sd, color=line.get_color(), alpha=0.15)
        ax.axhline(expected[proj], color="k", ls=":", label=f"K = {expected[proj]:.2f}")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("synapses per neuron")
        ax.set_title(f"{label} projection")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_rewiring(
    path: Path,
    edges_s: np.ndarray,
    counts: dict[str, np.ndarray],
    sigmas: dict[str, float],
) -> Path:
    """Formation and elimination counts over time against distance (heat maps).

    Args:
        path: output PNG.
        edges_s: ``[chunks + 1]`` chunk boundaries (s).
        counts: ``{f"{event}_{proj}": int[chunks, bins]}`` for event in
            ``("formed", "eliminated")``, summed over seeds.
        sigmas: ``{projection: sigma}`` of the formation kernel.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 6.5), constrained_layout=True, sharex=True)
    for col, (proj, label) in enumerate(PROJECTIONS):
        for row, event in enumerate(("eliminated", "formed")):
            ax = axes[row, col]
            data = np.asarray(counts[f"{event}_{proj}"], float)
            bins = data.shape[1]
            shown = max(2, min(bins, int(np.ceil(6 * sigmas[proj])) + 2))
            image = ax.imshow(
                data[:, :shown].T,
                origin="lower",
                aspect="auto",
                interpolation="none",
                extent=(edges_s[0], edges_s[-1], 0, shown),
                cmap="magma_r",
            )
            fig.colorbar(image, ax=ax, label="synapses per record interval")
            ax.axhline(sigmas[proj], color="tab:cyan", ls="--", label=f"sigma = {sigmas[proj]}")
            ax.set_ylabel("distance")
            ax.set_title(f"{label}: {'eliminations' if row == 0 else 'formations'}")
            ax.legend(fontsize=8, loc="upper right")
            if row == 1:
                ax.set_xlabel("time (s)")
    return _save(fig, path)


def plot_receptive_fields(
    path: Path,
    side: int,
    centres: dict[str, np.ndarray],
    quality: dict[str, tuple[float, float]],
) -> Path:
    """The map of receptive-field centres, drawn as a grid, initial vs final.

    Each target neuron is drawn at its receptive-field centre (unwrapped next to its own
    position, so that the torus seam does not cross the picture); grid lines join
    neighbouring target neurons. A perfect map is the regular square grid.

    Args:
        path: output PNG.
        side: grid side.
        centres: ``{"initial": [n, 2], "final": [n, 2]}`` centres (NaN: no feed-forward input).
        quality: ``{time: (mean distance, mean spread)}``.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 6), constrained_layout=True)
    index = np.arange(side * side)
    own = np.stack([index % side, index // side], axis=1).astype(float)
    for ax, time in zip(axes, ("initial", "final"), strict=True):
        offset = (centres[time] - own + side / 2.0) % side - side / 2.0
        point = (own + offset).reshape(side, side, 2)  # [y, x, (x, y)]
        for y in range(side):
            ax.plot(point[y, :, 0], point[y, :, 1], "-", color="tab:blue", lw=0.6)
        for x in range(side):
            ax.plot(point[:, x, 0], point[:, x, 1], "-", color="tab:blue", lw=0.6)
        ax.plot(point[..., 0].ravel(), point[..., 1].ravel(), ".", color="k", ms=2)
        distance, spread = quality[time]
        ax.set_title(f"{time}: mean distance {distance:.2f}, mean spread {spread:.2f}")
        ax.set_aspect("equal")
        ax.set_xlim(-1.5, side + 0.5)
        ax.set_ylim(-1.5, side + 0.5)
        ax.set_xlabel("receptive-field centre x (input grid)")
        ax.set_ylabel("receptive-field centre y (input grid)")
    return _save(fig, path)


def plot_map_quality(path: Path, times: np.ndarray, series: dict[str, Any]) -> Path:
    """Map quality (Bamford et al.) over time: mean RF distance from ideal, mean RF spread.

    Args:
        path: output PNG.
        times: ``[records]`` record times (s).
        series: ``{"rf_distance": [seeds, records], "rf_spread": [seeds, records]}``.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for ax, key, label in (
        (axes[0], "rf_distance", "mean distance of RF centre from ideal"),
        (axes[1], "rf_spread", "mean RF spread (sd, grid units)"),
    ):
        _band(ax, times, series[key], label)
        ax.set_xlabel("time (s)")
        ax.set_ylabel(label)
    return _save(fig, path)
