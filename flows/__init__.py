"""Prefect flows: thin, typed procedures over consentflow's batch functions."""
