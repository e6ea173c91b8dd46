"""akviz: adaptive kernels of feature-learning infinite-width networks.

Lazy baselines (NNGP, NTK), the Bayesian adaptive kernel (aNBK) and the
weight-decay adaptive NTK (aNTK) of Lauditi, Bordelon & Pehlevan (ICML 2025),
with datasets, metrics and finite-width checks. Computation is JAX in float64
(enabled per call, not globally), on the CPU or a GPU when JAX sees one.
"""

from .anbk import ANBKResult, anbk, preactivation_histogram, preactivation_samples
from .antk import ANTKResult, antk, neuron_preactivations
from .activations import Activation, get_activation, list_activations, register_activation
from .data import DEFAULT_DATASET, Dataset, list_datasets, load_cifar10, load_dataset, load_mnist, read_idx
from .kernels import LazyKernels, input_kernel, lazy_kernels, nngp, ntk, train_test_kernels
from .lazy import LazyResult, lazy_predictor
from .regression import alignment, classification_error, kernel_ridge, mse
from .network import NetworkResult, PosteriorResult, empirical_kernels, sample_posterior, train_network
from .compare import compare, compare_kernels, compare_predictions, relative_frobenius

__version__ = "0.1.0"

__all__ = [
    "ANTKResult", "antk", "neuron_preactivations",
    "Activation", "get_activation", "list_activations", "register_activation",
    "DEFAULT_DATASET", "Dataset", "list_datasets", "load_cifar10", "load_dataset", "load_mnist", "read_idx",
    "LazyKernels", "input_kernel", "lazy_kernels", "nngp", "ntk", "train_test_kernels",
    "LazyResult", "lazy_predictor",
    "alignment", "classification_error", "kernel_ridge", "mse",
    "ANBKResult", "anbk", "preactivation_histogram", "preactivation_samples",
    "NetworkResult", "PosteriorResult", "empirical_kernels", "sample_posterior", "train_network",
    "compare", "compare_kernels", "compare_predictions", "relative_frobenius",
]
