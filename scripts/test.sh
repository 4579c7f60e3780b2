#!/usr/bin/env bash
# Set up a clean virtual environment and run the whole test suite (what CI runs).
# torch is installed first and pinned, so pip never resolves another (CUDA) build of it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${POWERSAM_VENV:-.venv}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[test]"
# Meta's SAM 2 package, only as the reference of the equivalence tests: pure Python (no CUDA extension), no deps.
SAM2_BUILD_CUDA=0 "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation "sam2==1.1.0"
# Two test processes (CI has two cores), each with one torch / ONNX Runtime thread so they do not fight over the
# cores; a file's tests stay in one process, so its module fixtures (exports, tiny trainings) are built once.
# PYTEST_WORKERS=0 runs in one process; extra arguments go to pytest.
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$VENV/bin/python" -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
