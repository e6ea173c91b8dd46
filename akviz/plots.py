"""Plotly figures shared by the dashboard pages (pure Plotly, no Streamlit)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def class_order(labels) -> np.ndarray:
    """Indices that sort points by class label (stable), so heatmaps show class blocks."""
    return np.argsort(np.asarray(labels), kind="stable")


def kernel_grid(rows: dict, labels, *, height_per_row: int = 300, shared_scale: bool = False) -> go.Figure:
    """Heatmaps of several kernels per row, points sorted by class.

    Args:
      rows: ``{row title: [(panel title, (n, n) kernel), ...]}``.
      labels: class label of each of the ``n`` points (sorting key and hover text).
      shared_scale: one colour scale per row (to compare layers) instead of per panel.
    """
    order = class_order(labels)
    n_rows = len(rows)
    n_cols = max(len(panels) for panels in rows.values())
    titles = []
    for panels in rows.values():
        titles += [t for t, _ in panels] + [""] * (n_cols - len(panels))
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=titles,
                        horizontal_spacing=0.04, vertical_spacing=0.12 / max(n_rows, 1))
    sorted_labels = np.asarray(labels)[order]
    for r, (row_title, panels) in enumerate(rows.items(), start=1):
        vmax = max(float(np.max(np.abs(k))) for _, k in panels) if shared_scale else None
        for c, (_, k) in enumerate(panels, start=1):
            k = np.asarray(k)[np.ix_(order, order)]
            fig.add_trace(go.Heatmap(
                z=k, colorscale="RdBu_r", zmid=0,
                zmin=-vmax if vmax else None, zmax=vmax if vmax else None,
                showscale=(c == len(panels)),
                colorbar=dict(len=0.9 / n_rows, y=1 - (r - 0.5) / n_rows, thickness=12),
                customdata=np.broadcast_to(sorted_labels[:, None].astype(str), k.shape),
                hovertemplate="row class %{customdata}<br>value %{z:.4g}<extra>" + row_title + "</extra>",
            ), row=r, col=c)
            fig.update_xaxes(showticklabels=False, row=r, col=c)
            fig.update_yaxes(showticklabels=False, autorange="reversed", scaleanchor=f"x{(r - 1) * n_cols + c}",
                             row=r, col=c)
        fig.update_yaxes(title_text=row_title, row=r, col=1)
    fig.update_layout(height=height_per_row * n_rows, margin=dict(l=60, r=20, t=40, b=20))
    return fig


def bar_by_layer(series: dict, title: str, yaxis: str) -> go.Figure:
    """Grouped bars, one group per layer: ``{name: [value per layer]}``."""
    fig = go.Figure()
    for name, values in series.items():
        fig.add_trace(go.Bar(name=name, x=[f"layer {l}" for l in range(1, len(values) + 1)], y=list(values)))
    fig.update_layout(title=title, yaxis_title=yaxis, barmode="group", height=320,
                      margin=dict(l=60, r=20, t=50, b=40))
    return fig
