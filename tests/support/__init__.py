"""Test support: pytest plugin modules (fixtures) and the helpers tests import.

Registered as plugins from ``tests/conftest.py`` (``pytest_plugins``), so every test sees their
fixtures without importing them: ``database`` (the per-backend ``engine`` and friends),
``prefect`` (the session's Prefect test server), ``cli`` (the in-process CLI), ``smtp`` (a real
SMTP server on loopback) and ``webhooks`` (a real webhook receiver on loopback). ``seeding`` and
``web`` hold plain helpers only; tests import them (``from tests.support.web import seed``).
"""
