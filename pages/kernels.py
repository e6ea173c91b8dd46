"""Kernel explorer: layer kernels of the lazy NNGP and NTK, sorted by class."""

import pandas as pd
import streamlit as st

from akviz.plots import bar_by_layer, kernel_grid
from dashboard import common

st.title("Layer kernels")
data = common.data_controls()
net = common.network_controls()
ridge = st.sidebar.select_slider("Ridge", options=[1e-4, 1e-3, 1e-2, 1e-1, 1.0], value=1e-2, key="ridge")

try:
    with st.spinner("Computing kernels..."):
        ds = common.dataset(**data)
        results = {m: common.lazy(**data, method=m, **net, ridge=ridge) for m in ("nngp", "ntk")}
except ValueError as exc:
    st.error(str(exc))
    st.stop()

st.caption(f"{ds.description}; P = {len(ds.y_train)} training, {len(ds.y_test)} test points. "
           "Rows and columns are training points sorted by class.")

summary = pd.DataFrame([
    {"kernel": m.upper(), "test MSE": r.test_loss, "test error": r.test_error, "train MSE": r.train_loss,
     "alignment (per layer)": common.format_layers(r.alignment), "seconds": r.seconds}
    for m, r in results.items()
])
st.dataframe(summary, hide_index=True, width="stretch")

columns = {m.upper(): list(r.kernels) for m, r in results.items()}
st.plotly_chart(kernel_grid(columns, ds.labels_train), width="stretch", key="heatmaps")
st.plotly_chart(bar_by_layer({m.upper(): r.alignment for m, r in results.items()},
                             "Kernel-target alignment y^T K y / (|K|_F |y|^2)", "alignment"),
                width="stretch", key="alignment")
