"""Keras callbacks under ``tf.distribute.MirroredStrategy`` and ``keras.distribution.DataParallel`` (2 CPU devices).

Each backend's runs happen in one subprocess (``tests/keras_callbacks/_dist_case.py``): the two logical CPUs (and
JAX's two host devices) must be configured before TensorFlow / JAX start. Every scenario fits the same tiny model
(no BatchNorm) on the same 64 samples for 8 SGD steps with global batch 16, on one device and on two; the
distributed run must learn what the one-device run learns. Tolerances: the model weights within 1e-5 absolute
(measured at most 2.4e-7: only the summation order of the gradient differs), the QuantSpec scales within 1e-5
relative (measured: input scales exactly equal, weight scales within 1.2e-7), masks exactly equal.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("keras", reason="keras not installed")
pytest.importorskip("tensorflow", reason="tensorflow not installed")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WEIGHT_ATOL = 1e-5
SCALE_RTOL = 1e-5
DISTRIBUTED = {"tensorflow": "mirrored", "jax": "data_parallel"}


@pytest.fixture(scope="module", params=["tensorflow", "jax"])
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Every scenario of one backend, one device and two, run once per module: (folder, distributed mode)."""
    backend = str(request.param)
    if backend == "jax" and importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed: keras.distribution.DataParallel needs the JAX backend")
    folder = tmp_path_factory.mktemp(f"dist-{backend}")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.keras_callbacks._dist_case", backend, str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return folder, DISTRIBUTED[backend]


def _load(folder: Path, mode: str, scenario: str) -> dict[str, Any]:
    error = folder / f"{mode}-{scenario}.error.txt"
    if error.exists():
        pytest.fail(f"{mode} run of {scenario!r} raised:\n{error.read_text()}")
    with np.load(folder / f"{mode}-{scenario}.npz") as data:
        return {k: data[k] for k in data.files}


def _pair(runs: tuple[Path, str], scenario: str) -> tuple[dict[str, Any], dict[str, Any]]:
    folder, mode = runs
    return _load(folder, "single", scenario), _load(folder, mode, scenario)


def _weight_gap(a: dict[str, Any], b: dict[str, Any]) -> float:
    keys = [k for k in a if k.startswith("weight/")]
    assert keys and keys == [k for k in b if k.startswith("weight/")]
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)


def test_distributed_run_uses_two_devices_and_learns_what_one_device_learns(runs: tuple[Path, str]) -> None:
    one, two = _pair(runs, "plain")
    assert int(one["devices"]) == 1
    assert int(two["devices"]) == 2
    assert _weight_gap(one, two) < WEIGHT_ATOL


def test_pruning_masks_equal_one_device(runs: tuple[Path, str]) -> None:
    one, two = _pair(runs, "pruning")
    masks = sorted(k for k in one if k.startswith("mask/"))
    assert masks == sorted(k for k in two if k.startswith("mask/"))
    assert len(masks) == 3
    for key in masks:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)
        assert 0.3 < 1.0 - float(np.mean(two[key])) < 0.7, key  # pruned toward the 0.5 target
    assert _weight_gap(one, two) < WEIGHT_ATOL
    # the pruned weights are zero in the distributed model after its last step
    kernels = [k for k in two if k.startswith("weight/") and k.endswith("kernel")]
    assert sum(int(np.sum(two[k] == 0.0)) for k in kernels) == sum(int(np.sum(~two[m])) for m in masks)


@pytest.mark.parametrize("observer", ["ema", "minmax", "percentile"])
def test_quant_spec_equals_one_device(runs: tuple[Path, str], observer: str) -> None:
    one, two = _pair(runs, f"qat-{observer}")
    spec_one, spec_two = json.loads(str(one["spec"]))["layers"], json.loads(str(two["spec"]))["layers"]
    assert [layer["name"] for layer in spec_one] == [layer["name"] for layer in spec_two] == ["conv1", "conv2", "fc"]
    for a, b in zip(spec_one, spec_two, strict=True):
        assert a["input_scale"] > 0.0
        np.testing.assert_allclose(b["input_scale"], a["input_scale"], rtol=SCALE_RTOL, err_msg=a["name"])
        np.testing.assert_allclose(b["weight_scales"], a["weight_scales"], rtol=SCALE_RTOL, err_msg=a["name"])
    assert _weight_gap(one, two) < WEIGHT_ATOL


def test_distillation_student_equals_one_device(runs: tuple[Path, str]) -> None:
    one, two = _pair(runs, "distillation")
    assert _weight_gap(one, two) < WEIGHT_ATOL
    # the teacher changed what was learned (the comparison above is not the plain fit's twice)
    plain = _load(runs[0], runs[1], "plain")
    assert _weight_gap(plain, two) > 100 * WEIGHT_ATOL


def test_export_writes_once(runs: tuple[Path, str]) -> None:
    folder, mode = runs
    one, two = _pair(runs, "export")
    files_one = [f.split("/", 1)[1] for f in json.loads(str(one["files"]))]
    files_two = [f.split("/", 1)[1] for f in json.loads(str(two["files"]))]
    assert files_two == files_one
    assert json.loads(str(two["status"])) == json.loads(str(one["status"]))
    assert files_two.count("report.json") == 1
    if mode == "mirrored":
        # one artifact, verified in LiteRT against the distributed model
        assert files_two == ["model.tflite", "report.json", "report.md"]
        assert json.loads(str(two["status"])) == ["ok"]
