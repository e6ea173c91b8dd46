"""Preactivation densities: the Bayesian tilted single-site density against the Gaussian prior."""

import numpy as np
import streamlit as st

import akviz
from akviz.plots import density_overlay, scatter_2d
from dashboard import common

st.title("Preactivation densities")
s = common.page_setup()
st.markdown(
    "In the lazy limit every preactivation `h^l_mu` is Gaussian. In a wide Bayesian network at "
    "`gamma0 > 0` the single-neuron density is the prior tilted by `exp(-phi^T hatPhi phi / 2)`: neurons "
    "whose features align with the task gain weight and the density becomes non-Gaussian (THEORY.md 3.1). "
    "With the aNTK selected, the same view shows the DMFT neurons at initialisation and at the end of training."
)
try:
    ds = common.dataset(**s.data)
    method = s.method if (s.method == "anbk" or s.depth == 1) else "anbk"
    label = "aNBK" if method == "anbk" else "aNTK"
    with st.spinner(f"Solving the {label} at gamma0 = {s.gamma0:g}..."):
        result, info = common.adaptive(s, method=method)
except ValueError as exc:
    st.error(str(exc))
    st.stop()
if method != s.method:
    st.info("The DMFT neuron view is for depth 1; showing the Bayesian (aNBK) densities.")
common.show_status(result, info)

classes = np.unique(ds.labels_train)
first_of = {c: int(np.flatnonzero(ds.labels_train == c)[0]) for c in classes}
c1, c2, c3 = st.columns(3)
layer = c1.slider("Layer l", 1, s.depth, s.depth, key="density_layer") if (s.depth > 1 and method == "anbk") else 1
point_a = int(c2.number_input("Training point A", 0, s.n_train - 1, first_of[classes[0]], key="point_a",
                              help="Defaults: the first training point of each class."))
point_b = int(c3.number_input("Training point B", 0, s.n_train - 1, first_of[classes[-1]], key="point_b"))


def _hist(values, edges, weights=None):
    density, _ = np.histogram(values, bins=edges, weights=weights, density=True)
    return 0.5 * (edges[1:] + edges[:-1]), density


@st.cache_data(max_entries=16, show_spinner=False)
def bayes_view(_result, key, layer, a, b):
    samples = akviz.preactivation_samples(_result, layer, [a, b])
    hist = {pt: akviz.preactivation_histogram(_result, layer, pt) for pt in (a, b)}
    return samples, hist


rng = np.random.default_rng(0)
if method == "anbk":
    samples, hist = bayes_view(result, (common.problem_key(s, "anbk"), s.gamma0), layer, point_a, point_b)
    curves = {pt: {"tilted (aNBK)": (hist[pt]["centers"], hist[pt]["tilted"]),
                   "prior samples": (hist[pt]["centers"], hist[pt]["prior"]),
                   "prior Gaussian": (hist[pt]["centers"], hist[pt]["prior_gaussian"])} for pt in (point_a, point_b)}
    # Resample the weighted tilted samples so the scatter shows the density, not the weights.
    w = np.asarray(samples["weights"], float)
    n_show = min(3000, len(w))
    tilted = np.asarray(samples["tilted"])[rng.choice(len(w), size=n_show, p=w / w.sum())]
    prior = np.asarray(samples["prior"])[:n_show]
    clouds = {"prior": (prior[:, 0], prior[:, 1]), "tilted (aNBK)": (tilted[:, 0], tilted[:, 1])}
    note = f"Effective sample size of the tilted samples: {samples['ess']:.0%} of {len(w)}."
else:
    h = akviz.neuron_preactivations(result, [point_a, point_b])
    curves = {}
    for j, pt in enumerate((point_a, point_b)):
        both = np.concatenate([h["init"][:, j], h["final"][:, j]])
        edges = np.linspace(*np.percentile(both, [0.5, 99.5]), 61)
        curves[pt] = {"DMFT neurons at init": _hist(h["init"][:, j], edges),
                      "DMFT neurons at the end": _hist(h["final"][:, j], edges)}
    n_show = min(3000, h["init"].shape[0])
    clouds = {"init": (h["init"][:n_show, 0], h["init"][:n_show, 1]),
              "end of training": (h["final"][:n_show, 0], h["final"][:n_show, 1])}
    note = f"{h['init'].shape[0]} sampled neurons (antithetic pairs share their preactivations)."

cols = st.columns(2)
for col, pt in zip(cols, (point_a, point_b)):
    fig = density_overlay(curves[pt], title=f"h^{layer} at training point {pt} (class {ds.labels_train[pt]})")
    col.plotly_chart(fig, width="stretch", key=f"hist_{pt}")
fig2 = scatter_2d(clouds, title=f"Joint preactivations at points {point_a} and {point_b} (layer {layer})",
                  xaxis=f"h at point {point_a} (class {ds.labels_train[point_a]})",
                  yaxis=f"h at point {point_b} (class {ds.labels_train[point_b]})")
st.plotly_chart(fig2, width="stretch", key="scatter2d")
st.caption(note)
common.downloads(f"densities-{method}-g{s.gamma0:g}", fig2, result)
