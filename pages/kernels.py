"""Kernel explorer: adaptive layer kernels beside the lazy ones as gamma0 moves."""

import pandas as pd
import streamlit as st

from akviz.plots import bar_by_layer, kernel_grid
from dashboard import common

st.title("Kernel explorer")
s = common.page_setup()
lazy_kind = "nngp"  # Phi^l is compared with the NNGP Phi^l of the same layer

try:
    ds = common.dataset(**s.data)
    lazy = common.lazy(**s.data, method=lazy_kind, depth=s.depth, activation=s.activation, ridge=s.ridge)
    lazy_ntk = common.lazy(**s.data, method="ntk", depth=s.depth, activation=s.activation,
                           ridge=(s.depth + 1) * s.weight_decay if s.method == "antk" else 1.0 / s.beta)
    with st.spinner(f"Solving {common.METHOD_LABELS[s.method]} at gamma0 = {s.gamma0:g}..."):
        result, info = common.adaptive(s)
except ValueError as exc:
    st.error(str(exc))
    st.stop()

name = "aNBK" if s.method == "anbk" else "aNTK"
st.caption(f"{ds.description}; P = {s.n_train} training points (rows and columns sorted by class), "
           f"{s.n_test} test points. Adaptive feature kernels Phi^l beside the lazy NNGP kernels "
           f"(ridge {s.ridge:g}) and their difference.")
common.show_status(result, info)
common.prefetch_status(s)

p = s.n_train
adaptive_layers = [k[:p, :p] for k in result.kernels_full]
columns = {
    f"{name} Phi": adaptive_layers,
    "NNGP Phi": list(lazy.kernels),
    f"{name} - NNGP": [a - b for a, b in zip(adaptive_layers, lazy.kernels)],
}
fig = kernel_grid(columns, ds.labels_train, diverging={f"{name} - NNGP"})
st.plotly_chart(fig, width="stretch", key="heatmaps")

rows = [
    {"predictor": f"{name} (gamma0 = {s.gamma0:g})", "test MSE": result.test_loss, "test error": result.test_error,
     "train MSE": result.train_loss, "alignment per layer": common.format_layers(result.alignment)},
    {"predictor": f"NNGP (ridge {lazy.ridge:g})", "test MSE": lazy.test_loss, "test error": lazy.test_error,
     "train MSE": lazy.train_loss, "alignment per layer": common.format_layers(lazy.alignment)},
    {"predictor": f"NTK (ridge {lazy_ntk.ridge:g})", "test MSE": lazy_ntk.test_loss,
     "test error": lazy_ntk.test_error, "train MSE": lazy_ntk.train_loss,
     "alignment per layer": common.format_layers(lazy_ntk.alignment)},
]
four = common.FOUR_DECIMALS  # one precision for the three rows
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
             column_config={"test MSE": four, "train MSE": four, "test error": four})
align = bar_by_layer({name: result.alignment, "NNGP": lazy.alignment},
                     "Kernel-target alignment y^T Phi y / (|Phi|_F |y|^2)", "alignment")
st.plotly_chart(align, width="stretch", key="alignment")
common.downloads(f"{s.method}-kernels-g{s.gamma0:g}", fig, result)
