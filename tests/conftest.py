"""Test session set-up: an isolated AIRFLOW_HOME with SQLite, this repo's DAGs/plugins, and shared fixtures.

The environment is set before anything imports airflow, so every test (and every DAG run) uses a throw-away
metadata database and never the developer's own Airflow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="lightly-airflow-test-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
        "LIGHTLY_HOME": str(_AIRFLOW_HOME / "lightly"),
    }
)
os.environ.pop("LIGHTLY_STORE_URL", None)
os.environ.pop("LIGHTLY_ARTIFACTS_ROOT", None)
sys.path.insert(0, str(REPO / "plugins"))

pytest_plugins = ["tests.postgres_server", "tests.s3_server", "tests.cloud_emulators"]


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Migrate the session's SQLite Airflow metadata DB once (~8 s); DAG tests depend on it."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    if result.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{result.stdout}\n{result.stderr}")
    return _AIRFLOW_HOME
