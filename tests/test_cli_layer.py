"""The command line is a layer of its own: argparse lives in ``powersam.cli`` only, and building the parser imports
neither torch nor onnx (``powersam predict`` / ``serve`` with an ONNX model run on a torch-free device)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "powersam"


def _imports_argparse(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "argparse":
            return True
    return False


def test_argparse_is_imported_only_by_the_cli_package():
    outside = sorted(str(p.relative_to(PACKAGE_DIR.parent)) for p in PACKAGE_DIR.rglob("*.py")
                     if "cli" not in p.relative_to(PACKAGE_DIR).parts[:1] and _imports_argparse(p))
    assert outside == []
    assert _imports_argparse(PACKAGE_DIR / "cli" / "__init__.py")  # guards the check itself


def test_building_the_parser_imports_neither_torch_nor_onnx():
    script = ("import json, sys\n"
              "from powersam.cli import build_parser\n"
              "build_parser().parse_args(['predict', 'x.png', '--model', 'm.onnx', '--out', 'o'])\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxruntime'))))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE_DIR.parent)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_export_help_names_the_quantiser_s_calibration_methods():
    pytest.importorskip("onnxruntime")
    from powersam.deploy.options import CALIBRATION_METHOD_NAMES
    from powersam.deploy.quantize import CALIBRATION_METHODS

    assert sorted(CALIBRATION_METHOD_NAMES) == sorted(CALIBRATION_METHODS)
