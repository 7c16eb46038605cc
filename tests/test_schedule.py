"""Runs nobody triggered: without LIGHTLY_CURATION_CONF they have no datasource and are skipped, not failed."""

from __future__ import annotations

import pytest
from lightly_airflow.schedule import nothing_to_curate

NO_DATASOURCE = {"datasource": {"uri": "", "window": "none"}, "dataset": ""}
CONFIGURED = {"datasource": {"uri": "s3://bucket/raw"}, "dataset": "street"}


@pytest.mark.parametrize("run_type", ["scheduled", "backfill", "asset_triggered"])
def test_an_unattended_run_without_a_datasource_has_nothing_to_curate(run_type: str) -> None:
    reason = nothing_to_curate(NO_DATASOURCE, run_type)
    assert reason is not None and run_type in reason and "LIGHTLY_CURATION_CONF" in reason


@pytest.mark.parametrize("run_type", ["scheduled", "backfill", "asset_triggered", "manual"])
def test_a_run_with_a_datasource_goes_on(run_type: str) -> None:
    assert nothing_to_curate(CONFIGURED, run_type) is None


def test_a_manual_run_without_a_datasource_goes_on_to_its_configuration_error() -> None:
    assert nothing_to_curate(NO_DATASOURCE, "manual") is None
    assert nothing_to_curate({}, "manual") is None


def test_the_task_sdks_run_type_enum_is_understood() -> None:
    from airflow.sdk.api.datamodels._generated import DagRunType  # what dag_run.run_type is inside a task

    assert nothing_to_curate(NO_DATASOURCE, DagRunType.SCHEDULED) is not None
    assert nothing_to_curate(NO_DATASOURCE, DagRunType.MANUAL) is None
