"""Shared sidebar, URL state and cached akviz calls for every page.

Every page starts with :func:`page_setup`, which draws the shared sidebar and
returns the settings. Widget values are carried across pages (Streamlit
otherwise forgets a widget's state on a page that does not draw it) and
mirror ``st.query_params``, so a link reproduces a view.
Caches are bounded (``max_entries``) so many users cannot exhaust a server.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import streamlit as st

import akviz
from akviz.data import EXAMPLE_DATASETS
from akviz.jit_cache import enable_compilation_cache
from akviz.sweep import SolutionCache

# compiled programs on disk ($AKVIZ_JAX_CACHE): a restarted server skips most of the first solve's compiling
enable_compilation_cache()

ACTIVATIONS = ("relu", "erf", "tanh", "linear")
SAMPLE_CHOICES = ("auto", 1000, 2000, 4000, 8000, 16000)
#: Table columns: losses, gaps and alignments to four decimals; quantities spanning decades (gaps to an exact
#: answer) in scientific notation. (Streamlit's default trims zeros, so rows of one column printed 0.19 beside 0.2428.)
FOUR_DECIMALS = st.column_config.NumberColumn(format="%.4f")
SCIENTIFIC = st.column_config.NumberColumn(format="%.1e")
BETAS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
WEIGHT_DECAYS = (0.01, 0.03, 0.1, 0.3, 1.0)
METHOD_LABELS = {"anbk": "aNBK (Bayesian)", "antk": "aNTK (weight decay)"}

# key -> (default, parser from a URL string)
URL_STATE = {
    "dataset": ("digits:3v8", str),
    "n_train": (100, int),
    "n_test": (200, int),
    "seed": (0, int),
    "depth": (1, int),
    "activation": ("relu", str),
    "method": ("anbk", str),
    "gamma0": (0.25, float),
    "beta": (1.0, float),
    "weight_decay": (0.1, float),
    "samples": ("auto", lambda s: s if s == "auto" else int(s)),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    dataset: str
    n_train: int
    n_test: int
    seed: int
    depth: int
    activation: str
    method: str
    gamma0: float
    beta: float
    weight_decay: float
    samples: object

    @property
    def data(self) -> dict:
        return dict(name=self.dataset, n_train=self.n_train, n_test=self.n_test, seed=self.seed)

    @property
    def ridge(self) -> float:
        """Ridge of the lazy baseline matched to the adaptive method (THEORY.md 2)."""
        return 1.0 / self.beta if self.method == "anbk" else self.weight_decay


def _valid(key, value):
    choices = {"dataset": EXAMPLE_DATASETS, "activation": ACTIVATIONS, "method": tuple(METHOD_LABELS),
               "beta": BETAS, "weight_decay": WEIGHT_DECAYS, "samples": SAMPLE_CHOICES}
    if key in choices:
        return value in choices[key]
    if key in ("n_train", "n_test"):
        return 20 <= value <= 200 and value % 10 == 0
    if key == "depth":
        return 1 <= value <= 4
    if key == "gamma0":
        return 0.05 <= value <= 2.0 and math.isfinite(value)
    return value >= 0


def load_url_state():
    """Once per session: seed widget state from the URL (invalid values are ignored)."""
    if st.session_state.get("_url_loaded"):
        return
    for key, (default, parse) in URL_STATE.items():
        value = default
        if key in st.query_params:
            try:
                candidate = parse(st.query_params[key])
                if _valid(key, candidate):
                    value = candidate
            except (TypeError, ValueError):
                pass
        st.session_state.setdefault(key, value)
    st.session_state["_url_loaded"] = True


def save_url_state():
    """Mirror the current settings into the URL so the view can be shared."""
    for key in URL_STATE:
        if key in st.session_state:
            value = str(st.session_state[key])
            if st.query_params.get(key) != value:
                st.query_params[key] = value


def sidebar():
    """Draw the shared controls (values live in session state under the URL_STATE keys)."""
    sb = st.sidebar
    sb.header("Data")
    sb.selectbox("Dataset", EXAMPLE_DATASETS, key="dataset",
                 help="Embedded datasets. MNIST / CIFAR-10 files work from the CLI and API (--data-dir).")
    sb.slider("Training points P", 20, 200, step=10, key="n_train")
    sb.slider("Test points", 20, 200, step=10, key="n_test")
    sb.number_input("Seed", 0, 10_000, key="seed")
    sb.header("Network")
    sb.slider("Hidden layers L", 1, 4, key="depth")
    sb.selectbox("Activation", ACTIVATIONS, key="activation")
    sb.header("Feature learning")
    sb.radio("Adaptive kernel", tuple(METHOD_LABELS), format_func=METHOD_LABELS.get, key="method",
             horizontal=True)
    sb.slider("gamma0 (feature-learning strength)", GAMMA0_MIN, GAMMA0_MAX, step=GAMMA0_STEP, key="gamma0",
              help="gamma0 -> 0 is the lazy kernel limit; gamma0 = O(1) is the rich regime.")
    if st.session_state["method"] == "anbk":
        sb.select_slider("beta (inverse temperature)", BETAS, key="beta")
    else:
        sb.select_slider("weight decay lambda", WEIGHT_DECAYS, key="weight_decay")
    sb.selectbox("Monte Carlo samples", SAMPLE_CHOICES, key="samples",
                 help="Samples / neurons of the adaptive solvers; 'auto' uses the solver default, except aNBK's "
                      "MALA chains: 2048 here for speed (the library's default is 8192). aNBK at depth 1 "
                      "(adaptive importance sampling) sizes its own draws and ignores this.")


#: Session-state key that app.py sets on every run: a page run without it was started without app.py.
APP_RAN = "_akviz_app_ran"


def _through_app_navigation() -> None:
    """Make sure app.py's ``st.navigation`` runs this page.

    Streamlit runs a folder named ``pages/`` beside the entry script as a legacy multipage app until
    ``st.navigation`` is first called. On a fresh server whose first request is a page's own address (a
    shared link to ``/sweep``), it ran that page without app.py (no wide layout, file names for navigation,
    an "app" entry) and went on doing so for every session until someone opened ``/``. Leaving that mode and
    rerunning runs app.py, whose navigation opens the same page. (Streamlit offers no setting for it; the
    flag is the one ``st.navigation`` itself clears.)"""
    from streamlit.runtime.pages_manager import PagesManager

    # app.py sets APP_RAN before its st.navigation; a page run without it while the flag is up is that case
    if not st.session_state.get(APP_RAN) and getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


def page_setup() -> Settings:
    """Load the URL state (first run), draw the sidebar, save the state; returns the settings."""
    _through_app_navigation()
    load_url_state()
    for key in URL_STATE:
        # Re-assigning turns widget state into session state, which survives a page switch.
        st.session_state[key] = st.session_state[key]
    sidebar()
    save_url_state()
    return settings()


def settings() -> Settings:
    return Settings(**{key: st.session_state[key] for key in URL_STATE})


# ---------------------------------------------------------------- cached computation

@st.cache_data(max_entries=32, show_spinner=False)
def dataset(name: str, n_train: int, n_test: int, seed: int):
    return akviz.load_dataset(name, n_train, n_test, seed)


@st.cache_data(max_entries=64, show_spinner=False)
def lazy(name: str, n_train: int, n_test: int, seed: int, method: str, depth: int, activation: str,
         ridge: float):
    return akviz.lazy_predictor(dataset(name, n_train, n_test, seed), method=method, depth=depth,
                                activation=activation, ridge=ridge)


@st.cache_resource(max_entries=1)
def solution_cache() -> SolutionCache:
    """One bounded store of adaptive solutions per server, shared for warm starts."""
    return SolutionCache(max_entries=48)


#: MALA chains of the dashboard's aNBK solves with samples "auto" (and of the depth-1 fallback beyond importance
#: sampling's reach): the library's 8192 converge more often with its 3 passes, but take 1.5-2x as long, and the
#: dashboard's single pass rarely converges there anyway.
QUICK_MALA_CHAINS = 2048


def solve_samples(s: Settings, method: str):
    """The ``samples`` a solve gets, None for the solver's own. aNBK: the sidebar's choice at depth >= 2
    (``QUICK_MALA_CHAINS`` for "auto"); at depth 1 ``QUICK_MALA_CHAINS``, which only the MALA fallback uses:
    importance sampling rounds it up to its own default draw of 131072 (and sizes later draws itself)."""
    if method == "anbk":
        return QUICK_MALA_CHAINS if s.samples == "auto" or s.depth == 1 else int(s.samples)
    return None if s.samples == "auto" else int(s.samples)


def problem_key(s: Settings, method: str) -> tuple:
    """Everything but gamma0 that identifies a solve: the key of the shared SolutionCache."""
    strength = s.beta if method == "anbk" else s.weight_decay
    return (method, s.dataset, s.n_train, s.n_test, s.seed, s.depth, s.activation, strength,
            solve_samples(s, method))


#: ``max_iter`` of one aNBK solve in the dashboard: MALA chains run one averaging/evaluate pass
#: (the library default is 3). This keeps the slider responsive; the result still reports its
#: residual, Monte Carlo error and whether it converged.
ANBK_PASSES = 1

#: Draws of one depth-1 importance-sampling solve in the dashboard (the library default is 8): two
#: (one to solve, one to check) where the first check passes, up to four where noise fails it. At
#: gamma0 = 0.5 (digits:3v8, beta=1, warm from 0.4) two-draw solves took 1.75-2.0 s, a three-draw one
#: 3.9 s and a four-draw one 4.6 s; with two, the dashboard showed that position as not converged.
ANBK_DRAWS = 4

#: Budgets of one aNTK solve in the dashboard: integrator steps (depth 1 hands over to L-BFGS after
#: 300 of them from the initialisation, after one chunk of 25 from a warm start; a deep step is a
#: whole fixed-point iteration), the feature-form agreement that ends it (the convergence test of THEORY.md 4.2)
#: and L-BFGS iterations of the depth-1 fixed-point phase. The relu DMFT approaches its fixed point
#: slowly, and a lecture cannot wait; a solve that runs out says so (converged=False). Measured
#: (relu, default problem, lambda 0.1, 2-core machine): cold at gamma0 = 1 6.5 s, warm at 1.1 4.4 s,
#: test predictions 0.91% / 0.60% from 3000-iteration solves. The budget before, 500 iterations at
#: the library's tol, took 10.3 s / 7.5 s and was 1.6% / 1.2% away: its smoothing stages (equal
#: shares of the iterations) were too short. Budgets in steps and iterations, not seconds, so that a
#: position gives the same kernels on any machine and whether it was solved in the foreground or
#: beside the background solves.
ANTK_STEPS = 1000
ANTK_TOL = 1e-4
ANTK_FIXED_POINT_ITERATIONS = 2000
ANTK_DEEP_STEPS = 100
#: Safety net on a slow machine (then the result does depend on the machine, and says so). Generous:
#: the time a background solve spends paused for foreground ones counts towards it.
ANTK_SECONDS = 300.0


#: The gamma0 slider's range and step.
GAMMA0_MIN, GAMMA0_MAX, GAMMA0_STEP = 0.05, 2.0, 0.05


#: Seconds between drawing a slider position and solving its neighbours: the page (and the browser,
#: when it runs on the same machine) finish drawing before the solves take the CPU.
PREFETCH_DELAY = 1.5


def prefetch_enabled() -> bool:
    """Background solves of the slider range (off with AKVIZ_PREFETCH=0, e.g. in tests)."""
    return os.environ.get("AKVIZ_PREFETCH", "1") != "0"


def prefetch_order(gamma0: float, previous: float | None = None) -> list:
    """Every other slider position, nearest first.

    The neighbours come first, so the next step is a cache hit soonest; the rest of the range
    follows outward, each solve warm-started from the one before it, so that after a few minutes
    a jump anywhere is a cache hit too. After a move from ``previous``, positions further in the
    same direction go first (two steps ahead before one step back): the next move most likely
    continues. Without a direction, up comes before down.
    """
    grid = slider_grid()
    ahead = 1.0 if previous is None or previous <= gamma0 else -1.0
    back = 0.5 if previous is None or previous == gamma0 else 1.5  # extra cost, in steps, of going back

    def cost(g):
        return round(abs(g - gamma0) / GAMMA0_STEP + (back if (g - gamma0) * ahead < 0 else 0.0), 6)

    return sorted((g for g in grid if abs(g - gamma0) > 1e-9), key=lambda g: (cost(g), g))


def solver_for(s: Settings, method: str, progress=None):
    """``solver(gamma0, init)`` for the current settings; ``progress(text)`` receives solver progress."""
    ds = dataset(**s.data)
    samples = solve_samples(s, method)
    extra = {} if samples is None else {"samples": samples}
    cache = solution_cache()  # taken here, in the script's thread: the callbacks may run in the background's

    if method == "anbk":
        def report(iteration, state):
            cache.yield_to_foreground()  # the MALA solver reports every chunk of rounds: pauses come often
            if progress is not None:
                phase = state.get("phase")
                progress(f"aNBK pass {iteration}: {phase}, round {state['round']}" if phase else
                         f"aNBK iteration {iteration} done")

        budget = {"max_iter": ANBK_DRAWS, "fallback_max_iter": ANBK_PASSES} if s.depth == 1 else {
            "max_iter": ANBK_PASSES}
        return lambda g, init: akviz.anbk(ds, gamma0=g, beta=s.beta, depth=s.depth, activation=s.activation,
                                          seed=s.seed, init=init, callback=report, **budget, **extra)

    def report_dmft(rec):
        cache.yield_to_foreground()  # a background solve pauses while a foreground one computes
        if progress is None:
            return
        if rec.get("phase") == "fixed point":
            progress(f"DMFT fixed point: L-BFGS iteration {rec['fixed_point_iteration']} of at most "
                     f"{ANTK_FIXED_POINT_ITERATIONS}, train loss {rec['train_loss']:.3g}")
        else:
            progress(f"DMFT time t = {rec['time']:.3g} (step {rec['step']}), train loss {rec['train_loss']:.3g}")

    return lambda g, init: akviz.antk(ds, gamma0=g, weight_decay=s.weight_decay, depth=s.depth,
                                      activation=s.activation, seed=s.seed, init=init,
                                      max_steps=ANTK_STEPS if s.depth == 1 else ANTK_DEEP_STEPS,
                                      tol=ANTK_TOL, fixed_point_iterations=ANTK_FIXED_POINT_ITERATIONS,
                                      max_seconds=ANTK_SECONDS,
                                      callback=report_dmft, **extra)


def adaptive(s: Settings, method: str | None = None, gamma0: float | None = None, *, warm: bool = True):
    """The adaptive solution at ``gamma0`` (default: the slider), warm-started from the nearest cached one.

    ``warm=False`` solves from the random initialisation (cached separately), for views that show
    the whole trajectory. Returns ``(result, info)``; ``info`` says whether it was cached, where it
    warm-started and how long it took.
    """
    method = method or s.method
    on_slider = gamma0 is None
    gamma0 = round(float(s.gamma0 if gamma0 is None else gamma0), 6)  # one cache key per slider position
    problem = problem_key(s, method) + (() if warm else ("cold",))
    line = st.empty()  # live solver progress; cleared when done
    if not warm:
        usable = lambda r: False  # noqa: E731
    else:
        usable = usable_kernels  # finite chains / a finite DMFT population are a better start than fresh ones
    cache = solution_cache()
    result = cache.solve(problem, gamma0, solver_for(s, method, progress=line.caption), usable=usable)
    line.empty()
    if on_slider and warm and prefetch_enabled():
        # the next slider step becomes a cache hit, then the rest of the range: solved in the
        # background, each warm from its neighbour, ahead in the direction the slider last moved
        previous = st.session_state.get("_prefetch_from")
        previous = previous[1] if previous is not None and previous[0] == problem else None
        st.session_state["_prefetch_from"] = (problem, gamma0)
        cache.prefetch(problem, prefetch_order(gamma0, previous), solver_for(s, method), usable=usable,
                       delay=PREFETCH_DELAY)
    return result


def slider_grid() -> list:
    """The gamma0 slider's positions (rounded as the cache keys are)."""
    n = int(round((GAMMA0_MAX - GAMMA0_MIN) / GAMMA0_STEP)) + 1
    return [round(GAMMA0_MIN + i * GAMMA0_STEP, 6) for i in range(n)]


def prefetch_status(s: Settings, method: str | None = None) -> None:
    """A line that says how much of the slider range is solved, refreshed every 2 s while the
    background works.

    A lecturer can see when every slider position redraws from the cache. Once the background
    is idle the line stops polling: the fragment that saw it finish reruns the page once, which
    draws the line without the timer. Only when more positions are solved than at the last such
    rerun: positions whose solve failed are queued again by the rerun, and must not start a
    cycle of reruns.
    """
    if not prefetch_enabled():
        return
    problem = problem_key(s, method or s.method)
    grid = set(slider_grid())
    total = len(grid)
    cache = solution_cache()
    work = cache.background(problem)
    busy = bool(work["running"] or work["queued"])

    @st.fragment(run_every=2.0 if busy else None)
    def line():
        done = sum(1 for g in cache.cached_gammas(problem) if g in grid)
        now_work = cache.background(problem)
        if now_work["running"] or now_work["queued"]:
            now = f"; solving gamma0 = {now_work['running'][0]:g} now" if now_work["running"] else ""
            st.caption(f"Slider positions solved: {done} of {total}, the rest in the background{now} "
                       "(a solved position redraws at once).")
            return
        st.caption(f"Slider positions solved: {done} of {total}.")
        if busy and st.session_state.get("_prefetch_settled") != (problem, done):
            st.session_state["_prefetch_settled"] = (problem, done)
            st.rerun()  # redraw the page once, so that this line stops polling

    line()


def diagnostics(result, info=None) -> str:
    """One line of solver diagnostics for beside a figure."""
    parts = [("converged" if result.converged else "NOT converged"),
             f"{result.iterations} iteration" + ("" if result.iterations == 1 else "s")]
    residual = result.residual["max"] if isinstance(result.residual, dict) else result.residual
    parts.append(f"residual {residual:.2e}")
    mc = result.residual.get("mc_error") if isinstance(result.residual, dict) else None
    if mc is not None and len(mc) and np.all(np.isfinite(mc)) and max(mc) > 0:
        parts.append(f"Monte Carlo error {max(mc):.1%}")
    if hasattr(result, "ess"):
        parts.append(f"min ESS {min(result.ess):.0%}")
    if hasattr(result, "feature_gap"):
        parts.append(f"DMFT vs feature form {result.feature_gap:.1e}")
    if info:
        if info.get("prefetched"):
            parts.append(f"cached (solved in the background; waited {info['seconds']:.2f} s)")
        elif info.get("cached"):
            parts.append("cached")
        else:
            parts.append(f"{info['seconds']:.2f} s" + (f", warm start from gamma0={info['warm_from']:g}"
                                                       if info.get("warm_from") is not None else ", cold start"))
    return " · ".join(parts)


def usable_kernels(result) -> bool:
    """False when a solver gave up without kernels (it returns NaN then, never a silent wrong answer)."""
    return bool(np.all(np.isfinite(np.asarray(result.kernels_full))))


def show_status(result, info=None, *, stop_without_kernels: bool = True):
    """Diagnostics caption, and a warning that cannot be missed when the solver did not converge.

    A result without usable kernels is not drawn at all: the page stops after saying why.
    """
    st.caption("Solver: " + diagnostics(result, info))
    if not usable_kernels(result):
        st.error(f"No adaptive kernel to show: {result.message}")
        if stop_without_kernels:
            st.stop()
    elif not result.converged:
        hint = ""
        if getattr(result, "method", None) == "mala":  # advice the page can act on
            hint = (f" Here each aNBK solve runs {ANBK_PASSES} averaging pass(es) (the library default is 3)"
                    + ("; more Monte Carlo samples in the sidebar lower the noise." if result.depth > 1 else "."))
        elif getattr(result, "method", None) == "ais":
            hint = (f" Here each aNBK solve draws at most {ANBK_DRAWS} times (the library's default solve draws "
                    "more where the Monte Carlo error needs it: `akviz.anbk(...)` or "
                    "`python -m akviz solve --method anbk`).")
        st.warning(f"This result did not converge, so read the figures below with care. {result.message}{hint}")


def downloads(name: str, figure=None, result=None):
    """Download buttons: the figure as interactive HTML, the result as JSON and NPZ.

    Each file is built on click only: an aNTK result's snapshots took ~1 s to serialise at every redraw.
    """
    from akviz.export import to_json_bytes, to_npz_bytes

    cols = st.columns(3)
    if figure is not None:
        cols[0].download_button("Figure (HTML)", lambda: figure.to_html(include_plotlyjs="cdn"), f"{name}.html",
                                mime="text/html", key=f"dl-{name}-html")
    if result is not None:
        cols[1].download_button("Result (JSON)", lambda: to_json_bytes(result), f"{name}.json",
                                mime="application/json", key=f"dl-{name}-json")
        cols[2].download_button("Arrays (NPZ)", lambda: to_npz_bytes(result), f"{name}.npz",
                                mime="application/octet-stream", key=f"dl-{name}-npz")


def format_layers(values) -> str:
    return ", ".join(f"{v:.3f}" for v in np.asarray(values, float))
