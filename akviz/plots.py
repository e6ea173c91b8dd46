"""Plotly figures shared by the dashboard pages (pure Plotly, no Streamlit)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

#: Categorical colours for every figure: Okabe & Ito's colour-blind-safe set, ordered so that neighbours differ
#: in hue and lightness on a white page. (Streamlit's own chart palette pairs a dark and a light blue, which a
#: projector merges: the tilted and prior clouds of the densities page read as one.)
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
#: Reference curves (a prior Gaussian, the diagonal y = x).
REFERENCE = "#555555"


def class_order(labels) -> np.ndarray:
    """Indices that sort points by class label (stable), so heatmaps show class blocks."""
    return np.argsort(np.asarray(labels), kind="stable")


def _colour_range(kernels, diverging: bool):
    """Shared colour limits; the 99th percentile keeps a bright diagonal from washing out the blocks."""
    values = np.concatenate([np.asarray(k).ravel() for k in kernels])
    if diverging:
        vmax = float(np.percentile(np.abs(values), 99)) or 1.0
        return -vmax, vmax
    return float(np.percentile(values, 1)), float(np.percentile(values, 99))


def kernel_grid(columns: dict, labels, *, diverging=(), panel_px: int = 380) -> go.Figure:
    """Layer kernels as heatmaps: one column per kernel kind, one row per layer.

    Args:
      columns: ``{kind: [kernel of layer 1, ..., kernel of layer L]}``, each ``(n, n)``.
      labels: class label of each of the ``n`` points; rows/columns are sorted by it and
        thin lines mark the class boundaries.
      diverging: kinds drawn on a red-blue scale centred at zero (differences) instead of a sequential one.
    """
    order = class_order(labels)
    sorted_labels = np.asarray(labels)[order]
    boundaries = np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 0.5
    kinds = list(columns)
    depth = max(len(v) for v in columns.values())
    titles = [f"{kind} layer {l + 1}" if l < len(columns[kind]) else ""
              for l in range(depth) for kind in kinds]
    fig = make_subplots(rows=depth, cols=len(kinds), subplot_titles=titles,
                        horizontal_spacing=0.1, vertical_spacing=0.08 / max(depth, 1))
    n = len(order)
    # the row's class per cell; numeric labels travel as one typed array (a string per cell tripled the figure)
    cell = (sorted_labels if np.issubdtype(sorted_labels.dtype, np.number) else sorted_labels.astype(str))[:, None]
    hover = np.ascontiguousarray(np.broadcast_to(cell, (n, n)))
    for c, kind in enumerate(kinds, start=1):
        # One colour scale per kind: layers of one kind compare, kinds differ in scale (NTK > NNGP).
        div = kind in diverging
        zmin, zmax = _colour_range(columns[kind], div)
        right = fig.layout[f"xaxis{c if c > 1 else ''}"].domain[1]
        for r, k in enumerate(columns[kind], start=1):
            fig.add_trace(go.Heatmap(
                z=np.asarray(k)[np.ix_(order, order)].astype(np.float32), zmin=zmin, zmax=zmax,  # 7 digits drawn
                colorscale="RdBu_r" if div else "Viridis", showscale=(r == 1),
                colorbar=dict(thickness=10, x=right + 0.005, xanchor="left"), customdata=hover,
                hovertemplate="class %{customdata}<br>value %{z:.4g}<extra>" + f"{kind} layer {r}</extra>",
            ), row=r, col=c)
            for b in boundaries:
                for line in (dict(x0=b, x1=b, y0=-0.5, y1=n - 0.5), dict(x0=-0.5, x1=n - 0.5, y0=b, y1=b)):
                    fig.add_shape(type="line", line=dict(color="white", width=1), row=r, col=c, **line)
            idx = (r - 1) * len(kinds) + c
            fig.update_xaxes(showticklabels=False, constrain="domain", row=r, col=c)
            fig.update_yaxes(showticklabels=False, autorange="reversed", constrain="domain",
                             scaleanchor=f"x{idx if idx > 1 else ''}", row=r, col=c)
    fig.update_layout(height=panel_px * depth + 60, margin=dict(l=20, r=20, t=40, b=20))
    return fig


def bar_by_layer(series: dict, title: str, yaxis: str) -> go.Figure:
    """Grouped bars, one group per layer: ``{name: [value per layer]}``."""
    fig = go.Figure()
    for name, values in series.items():
        fig.add_trace(go.Bar(name=name, x=[f"layer {l}" for l in range(1, len(values) + 1)], y=list(values)))
    fig.update_layout(title=title, yaxis_title=yaxis, barmode="group", height=320, colorway=PALETTE,
                      margin=dict(l=60, r=20, t=50, b=40))
    return fig


def lines(x, series: dict, *, title: str, xaxis: str, yaxis: str, log_x: bool = False, log_y: bool = False,
          hlines: dict | None = None, markers: dict | None = None, height: int = 380,
          colours: dict | None = None) -> go.Figure:
    """Line plot of ``{name: y-values}`` over ``x``, with optional horizontal baselines.

    ``markers``: ``{name: (x, y, hover text)}`` drawn as open markers (e.g. finite-width networks).
    ``colours``: ``{trace name: colour}`` for traces that belong together (a curve and its markers); the
    others take ``PALETTE`` in order.
    """
    colours = colours or {}
    fig = go.Figure()
    for name, y in series.items():
        fig.add_trace(go.Scatter(x=list(x), y=list(y), mode="lines+markers", name=name,
                                 line=dict(color=colours.get(name))))
    for name, value in (hlines or {}).items():
        fig.add_trace(go.Scatter(x=[min(x), max(x)], y=[value, value], mode="lines", name=name,
                                 line=dict(dash="dash", color=colours.get(name))))
    for name, (mx, my, text) in (markers or {}).items():
        fig.add_trace(go.Scatter(x=list(mx), y=list(my), mode="markers", name=name, text=list(text),
                                 marker=dict(size=11, symbol="diamond-open", line=dict(width=2),
                                             color=colours.get(name))))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, height=height, colorway=PALETTE,
                      margin=dict(l=60, r=20, t=50, b=50))
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def density_overlay(histograms: dict, title: str) -> go.Figure:
    """Overlaid densities: ``{name: (bin centres, density)}``; names containing 'Gaussian' are dashed lines."""
    fig = go.Figure()
    for name, (centers, density) in histograms.items():
        if "Gaussian" in name:
            fig.add_trace(go.Scatter(x=centers, y=density, mode="lines", name=name,
                                     line=dict(dash="dash", color=REFERENCE)))
        else:
            fig.add_trace(go.Scatter(x=centers, y=density, mode="lines", name=name, line_shape="hvh",
                                     fill="tozeroy", opacity=0.6))
    fig.update_layout(title=title, xaxis_title="preactivation h", yaxis_title="density", height=360,
                      colorway=PALETTE, margin=dict(l=60, r=20, t=50, b=50))
    return fig


def scatter_2d(clouds: dict, *, title: str, xaxis: str, yaxis: str) -> go.Figure:
    """Point clouds ``{name: (x, y)}`` on shared axes (small translucent markers)."""
    fig = go.Figure()
    for name, (x, y) in clouds.items():
        fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", name=name, marker=dict(size=4, opacity=0.35)))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, height=420, colorway=PALETTE,
                      margin=dict(l=60, r=20, t=50, b=50))
    fig.update_yaxes(scaleanchor="x")
    return fig


def prediction_scatter(theory, network, *, title: str, xaxis: str = "theory", yaxis: str = "network") -> go.Figure:
    """Network vs theory predictions on the test points, with the diagonal."""
    theory, network = np.asarray(theory), np.asarray(network)
    lo = float(min(theory.min(), network.min()))
    hi = float(max(theory.max(), network.max()))
    fig = go.Figure([
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line=dict(dash="dash", color=REFERENCE)),
        go.Scatter(x=theory, y=network, mode="markers", name="test points", marker=dict(size=6, color=PALETTE[0])),
    ])
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, height=420,
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig


def dmft_animation(times, snapshots, train_loss, test_loss, alignment, labels, *, baselines=None,
                   max_frames: int = 40) -> go.Figure:
    """Animated DMFT trajectory: the kernel heatmap, the loss curves and the alignment over time.

    Args:
      times: record times ``t_k`` (> 0 after the first), ``(K,)``. A last time equal to the one
        before it is the fixed point reached after the dynamics (the aNTK's L-BFGS phase): its
        frame is named "fixed point".
      snapshots: ``(K, n, n)`` kernels at those times (training block), sorted by ``labels`` here.
      train_loss, test_loss, alignment: ``(K,)`` curves, drawn up to the current frame.
      baselines: ``{name: test loss}`` drawn as dashed lines on the loss panel.
    """
    times = np.asarray(times, float)
    keep = np.unique(np.linspace(0, len(times) - 1, min(max_frames, len(times))).round().astype(int))
    order = class_order(labels)
    snaps = np.asarray(snapshots)[:, order][:, :, order]
    t_plot = np.maximum(times, times[times > 0].min() / 2 if np.any(times > 0) else 1e-3)  # log axis
    zmin, zmax = float(np.percentile(snaps[-1], 1)), float(np.percentile(snaps[-1], 99))
    fig = make_subplots(rows=1, cols=3, column_widths=[0.36, 0.36, 0.28], horizontal_spacing=0.08,
                        subplot_titles=("feature kernel Phi(t)", "loss", "alignment of Phi(t)"))

    def traces(k):
        sl = slice(0, k + 1)
        return [
            go.Heatmap(z=snaps[k], zmin=zmin, zmax=zmax, colorscale="Viridis", showscale=False),
            go.Scatter(x=t_plot[sl], y=np.asarray(train_loss)[sl], mode="lines", name="train MSE"),
            go.Scatter(x=t_plot[sl], y=np.asarray(test_loss)[sl], mode="lines", name="test MSE"),
            go.Scatter(x=t_plot[sl], y=np.asarray(alignment)[sl], mode="lines", name="alignment"),
        ]

    # Open on the fixed point (the end); Play runs the dynamics from t = 0.
    first = traces(keep[-1])
    for trace, col in zip(first, (1, 2, 2, 3)):
        fig.add_trace(trace, row=1, col=col)
    for name, value in (baselines or {}).items():
        fig.add_trace(go.Scatter(x=[t_plot.min(), t_plot.max()], y=[value, value], mode="lines", name=name,
                                 line=dict(dash="dash")), row=1, col=2)
    def frame_name(k):  # frame names must be unique: the slider animates by name
        if k == len(times) - 1 and k > 0 and times[k] == times[k - 1]:
            return f"{times[k]:.4g} (fixed point)"
        return f"{times[k]:.4g}"

    fig.frames = [go.Frame(data=traces(k), traces=[0, 1, 2, 3], name=frame_name(k)) for k in keep]
    fig.update_xaxes(type="log", title_text="time t", range=[np.log10(t_plot.min()), np.log10(t_plot.max())],
                     row=1, col=2)
    fig.update_xaxes(type="log", title_text="time t", range=[np.log10(t_plot.min()), np.log10(t_plot.max())],
                     row=1, col=3)
    losses = np.concatenate([np.asarray(train_loss), np.asarray(test_loss)])
    positive = losses[losses > 0]
    if positive.size:
        fig.update_yaxes(type="log", range=[np.log10(positive.min()) - 0.1, np.log10(positive.max()) + 0.1],
                         row=1, col=2)
    fig.update_yaxes(range=[0, 1], row=1, col=3)
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_yaxes(showticklabels=False, autorange="reversed", scaleanchor="x", row=1, col=1)
    fig.update_layout(
        height=460, margin=dict(l=20, r=20, t=60, b=110), colorway=PALETTE,
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=-0.12, xanchor="left", buttons=[
            dict(label="Play", method="animate",
                 args=[None, dict(frame=dict(duration=250, redraw=True), fromcurrent=False, mode="immediate",
                                  transition=dict(duration=0))]),
            dict(label="Pause", method="animate",
                 args=[[None], dict(frame=dict(duration=0, redraw=False), mode="immediate")]),
        ])],
        sliders=[dict(x=0.12, y=-0.08, len=0.88, active=len(fig.frames) - 1, currentvalue=dict(prefix="t = "), steps=[
            dict(label=f.name, method="animate",
                 args=[[f.name], dict(mode="immediate", frame=dict(duration=0, redraw=True))]) for f in fig.frames
        ])],
    )
    return fig
