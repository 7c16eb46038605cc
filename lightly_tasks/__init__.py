"""The curation pipeline's logic: plain Python, testable without an Airflow scheduler.

Nothing in this package imports airflow; the DAG files under ``dags/`` wire these functions into tasks.
"""
