"""The command line: valid JSON on success, exit 2 and one line on bad arguments."""

import json
import subprocess
import sys

import pytest


def _run(*args):
    return subprocess.run([sys.executable, "-m", "akviz", *args], capture_output=True, text=True, timeout=300)


def test_solve_nngp_json():
    out = _run("solve", "--method", "nngp", "--dataset", "digits:3v8", "--n-train", "100", "--n-test", "200",
               "--seed", "0", "--depth", "1", "--activation", "relu", "--ridge", "0.01", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)  # exactly one JSON object
    for key in ("method", "dataset", "n_train", "n_test", "depth", "activation", "test_loss", "train_loss",
                "test_error", "alignment", "seconds"):
        assert key in summary
    assert summary["test_loss"] < 1.0 and len(summary["alignment"]) == 1


def test_solve_anbk_json_reports_the_saddle_checks():
    out = _run("solve", "--method", "anbk", "--n-train", "30", "--n-test", "20", "--gamma0", "0.2", "--beta", "1",
               "--solver", "ais", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["solver"] == "ais" and summary["converged"] is True and summary["iterations"] >= 2
    assert 0 < summary["residual"] < 1e-2 and 0.05 < summary["ess"] <= 1
    assert summary["samples"] >= 131072 and summary["test_loss"] < 1.0


def test_datasets_lists_embedded_ones():
    out = _run("datasets", "--json")
    assert out.returncode == 0
    names = [d["name"] for d in json.loads(out.stdout)["datasets"]]
    assert "digits:AvB" in names and "mnist:AvB" in names


@pytest.mark.parametrize("args", [
    ["--dataset", "nope"],
    ["--activation", "swish"],
    ["--n-train", "5000"],
    ["--ridge", "-1"],
    ["--depth", "0"],
    ["--method", "anbk"],
    ["--method", "magic"],
    ["--method", "anbk", "--gamma0", "0.1", "--beta", "1", "--depth", "2", "--solver", "ais"],
])
def test_bad_arguments_exit_2_with_one_line(args):
    out = _run("solve", *args, "--json")
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("akviz: error:") and "Traceback" not in out.stderr


def test_compiled_programs_are_kept_for_the_next_run(tmp_path):
    """$AKVIZ_JAX_CACHE names the folder of the persistent compilation cache; "0" turns it off."""
    import os

    args = ("solve", "--method", "anbk", "--n-train", "20", "--n-test", "10", "--gamma0", "0.2", "--beta", "1",
            "--solver", "ais", "--json")
    cache = tmp_path / "jax"
    env = dict(os.environ, AKVIZ_JAX_CACHE=str(cache))
    out = subprocess.run([sys.executable, "-m", "akviz", *args], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert cache.is_dir() and len(list(cache.iterdir())) > 0
    off = tmp_path / "off"
    env = dict(os.environ, AKVIZ_JAX_CACHE="0", HOME=str(off))
    out = subprocess.run([sys.executable, "-m", "akviz", *args], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert not off.exists()
