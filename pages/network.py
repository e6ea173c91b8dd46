"""Theory vs network: finite-width networks trained on the spot beside the adaptive kernel they approach."""

import pandas as pd
import streamlit as st

import akviz
from akviz.plots import kernel_grid, lines, prediction_scatter
from dashboard import common

WIDTHS = [256, 512, 1024, 2048, 4096]

st.title("Theory vs network")
s = common.page_setup()
bayes = s.method == "anbk"
st.markdown(
    ("**aNBK**: a Bayesian network of width N sampled by Langevin dynamics (exact Gaussian read-out "
     "updates), posterior-averaged, against the saddle-point kernels (THEORY.md 3.3)."
     if bayes else
     "**aNTK**: a network of width N trained by full-batch gradient descent with weight decay, "
     "against the DMFT fixed point (THEORY.md 4.4).")
    + " The theory is the N -> infinity limit: the gaps should shrink as N grows."
)
c1, c2 = st.columns(2)
width = c1.select_slider("Width N", WIDTHS, value=1024, key="net_width")
steps = c2.select_slider("Steps", [1000, 2000, 4000, 8000, 16000], value=4000, key="net_steps",
                         help="Gradient-descent steps (aNTK) or Langevin steps (aNBK, a quarter of them burn-in).")


@st.cache_data(max_entries=12, show_spinner=False)
def network_run(method: str, data: tuple, depth: int, activation: str, gamma0: float, strength: float,
                width: int, steps: int):
    ds = common.dataset(*data)
    if method == "anbk":
        return akviz.sample_posterior(ds, width=width, depth=depth, activation=activation, gamma0=gamma0,
                                      beta=strength, steps=steps, burn_in=steps // 4, seed=data[-1])
    return akviz.train_network(ds, width=width, depth=depth, activation=activation, gamma0=gamma0,
                               weight_decay=strength, steps=steps, seed=data[-1])


try:
    ds = common.dataset(**s.data)
    with st.spinner("Solving the theory..."):
        theory, info = common.adaptive(s)
except ValueError as exc:
    st.error(str(exc))
    st.stop()
common.show_status(theory, info)

strength = s.beta if bayes else s.weight_decay
run_key = (s.method, s.dataset, s.n_train, s.n_test, s.seed, s.depth, s.activation, s.gamma0, strength, steps)
done = st.session_state.setdefault("network_runs", {}).setdefault(run_key, set())


def run(n):
    data = (s.dataset, s.n_train, s.n_test, s.seed)
    result = network_run(s.method, data, s.depth, s.activation, float(s.gamma0), float(strength), n, steps)
    done.add(n)
    return result


b1, b2 = st.columns(2)
if b1.button(f"Run width {width}", type="primary", key="run_net"):
    with st.spinner(f"{'Sampling' if bayes else 'Training'} a width-{width} network ({steps} steps)..."):
        run(width)
if b2.button("Width scan 256 -> 2048", key="scan_net"):
    bar = st.progress(0.0)
    scan = WIDTHS[:4]
    for i, n in enumerate(scan):
        bar.progress(i / len(scan), text=f"width {n} ({i + 1}/{len(scan)})")
        run(n)
    bar.progress(1.0, text="done")

if not done:
    st.info("Press **Run width N** to train a network for the current settings (or scan several widths).")
    st.stop()

widths = sorted(done)
nets = {n: run(n) for n in widths}  # cache hits
comparisons = {n: akviz.compare(theory, nets[n], ds) for n in widths}
n_show = width if width in nets else widths[-1]
net, cmp = nets[n_show], comparisons[n_show]
if getattr(net, "diverged", False):
    st.error(f"The width-{n_show} network diverged: {net.message}")

p = s.n_train
name = "aNBK" if bayes else "aNTK"
fig = kernel_grid({f"{name} theory": [k[:p, :p] for k in theory.kernels_full],
                   f"network N={n_show}": [k[:p, :p] for k in net.kernels_full],
                   "network - theory": [a[:p, :p] - b[:p, :p] for a, b in zip(net.kernels_full, theory.kernels_full)]},
                  ds.labels_train, diverging={"network - theory"})
st.plotly_chart(fig, width="stretch", key="net_heatmaps")
scatter = prediction_scatter(theory.test_predictions, net.test_predictions,
                             title=f"Test predictions: network (N={n_show}) vs {name}",
                             xaxis=f"{name} predictor", yaxis="network")
st.plotly_chart(scatter, width="stretch", key="net_scatter")

rows = []
for n in widths:
    c = comparisons[n]
    rows.append({"width N": n, "correlation": c["predictions"]["correlation"],
                 "RMS difference": c["predictions"]["rms_difference"],
                 "kernel distance (last layer)": c["kernels"]["relative_frobenius"][-1],
                 "test MSE network": c["test_loss_network"], "test MSE theory": c["test_loss_theory"]})
table = pd.DataFrame(rows)
four = common.FOUR_DECIMALS
st.dataframe(table, hide_index=True, width="stretch",  # correlations sit at 0.9999x: five decimals tell them apart
             column_config={"correlation": st.column_config.NumberColumn(format="%.5f"), "RMS difference": four,
                            "kernel distance (last layer)": four, "test MSE network": four, "test MSE theory": four})
if len(widths) > 1:
    gaps = lines(widths, {"RMS prediction gap": table["RMS difference"],
                          "kernel distance (last layer)": table["kernel distance (last layer)"]},
                 title="Gaps against width", xaxis="width N", yaxis="gap", log_x=True, log_y=True)
    st.plotly_chart(gaps, width="stretch", key="net_gaps")
common.downloads(f"network-N{n_show}", fig, net)
