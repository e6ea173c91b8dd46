"""Plotly figures shared by the dashboard pages (pure Plotly, no Streamlit)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


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


def kernel_grid(columns: dict, labels, *, diverging: bool = False, panel_px: int = 420) -> go.Figure:
    """Layer kernels as heatmaps: one column per kernel kind, one row per layer.

    Args:
      columns: ``{kind: [kernel of layer 1, ..., kernel of layer L]}``, each ``(n, n)``.
      labels: class label of each of the ``n`` points; rows/columns are sorted by it and
        thin lines mark the class boundaries.
      diverging: a red-blue scale centred at zero (for differences) instead of a sequential one.
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
    hover = np.broadcast_to(sorted_labels[:, None].astype(str), (n, n))
    for c, kind in enumerate(kinds, start=1):
        # One colour scale per kind: layers of one kind compare, kinds differ in scale (NTK > NNGP).
        zmin, zmax = _colour_range(columns[kind], diverging)
        right = fig.layout[f"xaxis{c if c > 1 else ''}"].domain[1]
        for r, k in enumerate(columns[kind], start=1):
            fig.add_trace(go.Heatmap(
                z=np.asarray(k)[np.ix_(order, order)], zmin=zmin, zmax=zmax,
                colorscale="RdBu_r" if diverging else "Viridis", showscale=(r == 1),
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
    fig.update_layout(title=title, yaxis_title=yaxis, barmode="group", height=320,
                      margin=dict(l=60, r=20, t=50, b=40))
    return fig
