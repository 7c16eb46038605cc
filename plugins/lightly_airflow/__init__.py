"""Airflow-side glue of the curation pipeline: connections, locations and run contexts for the DAG tasks.

This is the only place (with ``dags/``) that imports Airflow; the logic lives in ``lightly_tasks``.
"""
