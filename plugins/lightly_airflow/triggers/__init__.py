"""Triggers that run in Airflow's triggerer (asyncio), for the deferrable sensors of ``lightly_airflow.sensors``."""
