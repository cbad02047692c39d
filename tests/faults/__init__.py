"""The standing fault suite (issue 14): one scripted multi-day scenario on PostgreSQL while
faults strike; see ``test_scenario.py``."""
