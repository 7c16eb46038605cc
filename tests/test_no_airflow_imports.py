"""``lightly_tasks`` is plain Python: no module imports airflow, statically or at run time."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lightly_tasks"


def _airflow_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [
                f"{path.name}:{node.lineno} import {a.name}"
                for a in node.names
                if a.name.split(".")[0] == "airflow"
            ]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "airflow"
        ):
            found.append(f"{path.name}:{node.lineno} from {node.module} import ...")
    return found


def test_static_no_airflow_import() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 10
    offenders = [hit for path in files for hit in _airflow_imports(path)]
    assert offenders == []


def test_static_check_detects_an_airflow_import(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from airflow.sdk import task\n    import airflow.models as m\n")
    assert len(_airflow_imports(sample)) == 2


def test_importing_every_module_does_not_load_airflow() -> None:
    modules = sorted(
        "lightly_tasks" if p.stem == "__init__" else f"lightly_tasks.{p.stem}" for p in PACKAGE.glob("*.py")
    )
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    assert "lightly_tasks.pipeline" in modules and "lightly_tasks.storage" in modules
