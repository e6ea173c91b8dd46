"""Sidebar controls and cached akviz calls shared by every page.

Caches are bounded (``max_entries``) so many users on one server cannot
exhaust its memory.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

import akviz
from akviz.data import EXAMPLE_DATASETS

ACTIVATIONS = ("relu", "erf", "tanh", "linear")


@st.cache_data(max_entries=32, show_spinner=False)
def dataset(name: str, n_train: int, n_test: int, seed: int):
    return akviz.load_dataset(name, n_train, n_test, seed)


@st.cache_data(max_entries=64, show_spinner=False)
def lazy(name: str, n_train: int, n_test: int, seed: int, method: str, depth: int, activation: str,
         ridge: float):
    return akviz.lazy_predictor(dataset(name, n_train, n_test, seed), method=method, depth=depth,
                                activation=activation, ridge=ridge)


def data_controls():
    """Dataset, sizes and seed in the sidebar; returns them as a dict."""
    sb = st.sidebar
    sb.header("Data")
    name = sb.selectbox("Dataset", EXAMPLE_DATASETS, index=0, key="dataset",
                        help="Embedded datasets; MNIST/CIFAR-10 work from the CLI with --data-dir.")
    n_train = sb.slider("Training points P", 20, 200, 100, step=10, key="n_train")
    n_test = sb.slider("Test points", 20, 200, 200, step=10, key="n_test")
    seed = sb.number_input("Seed", 0, 10_000, 0, key="seed")
    return dict(name=name, n_train=int(n_train), n_test=int(n_test), seed=int(seed))


def network_controls(max_depth: int = 4):
    sb = st.sidebar
    sb.header("Network")
    depth = sb.slider("Hidden layers L", 1, max_depth, 1, key="depth")
    activation = sb.selectbox("Activation", ACTIVATIONS, index=0, key="activation")
    return dict(depth=int(depth), activation=activation)


def format_layers(values) -> str:
    return ", ".join(f"{v:.3f}" for v in np.asarray(values, float))
