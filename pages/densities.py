"""Preactivation densities: the Bayesian tilted single-site density against the Gaussian prior."""

import numpy as np
import streamlit as st

import akviz
from akviz.plots import density_overlay, scatter_2d
from dashboard import common

st.title("Preactivation densities")
s = common.page_setup()
st.markdown(
    "In the lazy limit every preactivation `h^l_mu` is Gaussian. In a wide Bayesian network trained at "
    "`gamma0 > 0` the single-neuron density is the prior tilted by `exp(-phi^T hatPhi phi / 2)`: neurons "
    "whose features align with the task gain weight and the density becomes non-Gaussian (THEORY.md 3.1)."
)
try:
    ds = common.dataset(**s.data)
    with st.spinner(f"Solving the aNBK at gamma0 = {s.gamma0:g}, beta = {s.beta:g}..."):
        result, info = common.adaptive(s, method="anbk")
except ValueError as exc:
    st.error(str(exc))
    st.stop()
common.show_status(result, info)

classes = np.unique(ds.labels_train)
first_of = {c: int(np.flatnonzero(ds.labels_train == c)[0]) for c in classes}
c1, c2, c3 = st.columns(3)
layer = c1.slider("Layer l", 1, s.depth, s.depth, key="density_layer") if s.depth > 1 else 1
point_a = c2.number_input("Training point A", 0, s.n_train - 1, first_of[classes[0]], key="point_a",
                          help="Defaults: the first training point of each class.")
point_b = c3.number_input("Training point B", 0, s.n_train - 1, first_of[classes[-1]], key="point_b")


@st.cache_data(max_entries=16, show_spinner=False)
def densities(_result, key, layer, a, b):
    samples = akviz.preactivation_samples(_result, layer, [a, b])
    hist = {pt: akviz.preactivation_histogram(_result, layer, pt) for pt in (a, b)}
    return samples, hist


data_key = (common._problem(s, "anbk"), s.gamma0)
samples, hist = densities(result, data_key, layer, int(point_a), int(point_b))

cols = st.columns(2)
for col, pt in zip(cols, (int(point_a), int(point_b))):
    h = hist[pt]
    fig = density_overlay({"tilted (aNBK)": (h["centers"], h["tilted"]), "prior samples": (h["centers"], h["prior"]),
                           "prior Gaussian": (h["centers"], h["prior_gaussian"])},
                          title=f"h^{layer} at training point {pt} (class {ds.labels_train[pt]})")
    col.plotly_chart(fig, width="stretch", key=f"hist_{pt}")

# Resample the weighted tilted samples so the scatter shows the density, not the weights.
rng = np.random.default_rng(0)
w = np.asarray(samples["weights"], float)
n_show = min(3000, len(w))
idx = rng.choice(len(w), size=n_show, p=w / w.sum())
tilted = np.asarray(samples["tilted"])[idx]
prior = np.asarray(samples["prior"])[:n_show]
fig2 = scatter_2d({"prior": (prior[:, 0], prior[:, 1]), "tilted (aNBK)": (tilted[:, 0], tilted[:, 1])},
                  title=f"Joint preactivations at points {int(point_a)} and {int(point_b)} (layer {layer})",
                  xaxis=f"h at point {int(point_a)} (class {ds.labels_train[int(point_a)]})",
                  yaxis=f"h at point {int(point_b)} (class {ds.labels_train[int(point_b)]})")
st.plotly_chart(fig2, width="stretch", key="scatter2d")
st.caption(f"Effective sample size of the tilted samples: {samples['ess']:.0%} of {len(w)}.")
common.downloads(f"densities-g{s.gamma0:g}", fig2, result)
