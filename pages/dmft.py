"""DMFT convergence: the aNTK trajectory animated, ending at its fixed point."""

import numpy as np
import pandas as pd
import streamlit as st

from akviz.plots import dmft_animation, prediction_scatter
from dashboard import common

st.title("DMFT convergence")
s = common.page_setup()
st.markdown(
    "Gradient flow with weight decay at infinite width (THEORY.md 4): each sampled neuron carries its "
    "preactivations and read-out weight. Press **Play** to watch the feature kernel `Phi(t)` organise "
    "into class blocks while the losses fall, until the dynamics stop at the fixed point, where the "
    "network is the kernel machine `f(x) = Phi(x, X) (Phi + lambda I)^-1 y`."
)
if s.method != "antk":
    st.info("This page shows the aNTK (gradient flow with weight decay): using the sidebar's gamma0 "
            f"and weight decay lambda = {s.weight_decay:g}.")
try:
    ds = common.dataset(**s.data)
    with st.spinner(f"Running the DMFT at gamma0 = {s.gamma0:g}, lambda = {s.weight_decay:g}..."):
        result, info = common.adaptive(s, method="antk", warm=False)  # the whole trajectory from init
except ValueError as exc:
    st.error(str(exc))
    st.stop()
common.show_status(result, info)

p = s.n_train
snaps = np.asarray(result.snapshots_phi)[:, :p, :p]
align = np.asarray(result.record_alignment)
if align.ndim > 1:  # per layer: animate the last one
    align = align[:, -1]
fig = dmft_animation(result.record_times, snaps, result.record_train_loss, result.record_test_loss, align,
                     ds.labels_train, baselines={f"lazy NTK test (ridge {result.lazy_ntk_ridge:g})":
                                                 result.lazy_ntk_test_loss})
st.plotly_chart(fig, width="stretch", key="dmft_animation")

st.subheader("At the fixed point: three predictors")
st.markdown("The DMFT output, the feature form `Phi(x,X)(Phi + lambda I)^-1 y` and the NTK form "
            "`K(x,X)(K + 2 lambda I)^-1 y` with `K = Phi + G*C` (THEORY.md 4.2). The first two must agree "
            "at convergence; the NTK form is exact only for positively homogeneous activations and "
            "approximate for ReLU (neurons on the kink).")
table = pd.DataFrame([
    {"predictor": "DMFT output", "test MSE": result.test_loss, "relative gap to DMFT": 0.0},
    {"predictor": "feature form", "test MSE": result.test_loss_feature_form, "relative gap to DMFT": result.feature_gap},
    {"predictor": "NTK form", "test MSE": result.test_loss_ntk_form, "relative gap to DMFT": result.ntk_gap},
    {"predictor": f"lazy NTK (ridge {result.lazy_ntk_ridge:g})", "test MSE": result.lazy_ntk_test_loss,
     "relative gap to DMFT": np.nan},
    {"predictor": f"lazy NNGP (ridge {result.lazy_nngp_ridge:g})", "test MSE": result.lazy_nngp_test_loss,
     "relative gap to DMFT": np.nan},
])
st.dataframe(table, hide_index=True, width="stretch",  # gaps span decades; the lazy rows have none
             column_config={"test MSE": common.FOUR_DECIMALS, "relative gap to DMFT": common.SCIENTIFIC})
c1, c2 = st.columns(2)
c1.plotly_chart(prediction_scatter(result.test_predictions, result.feature_test_predictions,
                                   title="feature form vs DMFT (test points)", xaxis="DMFT output",
                                   yaxis="feature form"), width="stretch", key="feature_scatter")
c2.plotly_chart(prediction_scatter(result.test_predictions, result.ntk_test_predictions,
                                   title="NTK form vs DMFT (test points)", xaxis="DMFT output", yaxis="NTK form"),
                width="stretch", key="ntk_scatter")
common.downloads(f"dmft-g{s.gamma0:g}-lam{s.weight_decay:g}", fig, result)
