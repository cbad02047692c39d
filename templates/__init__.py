"""Jinja2 templates for emails (email/) and web pages (web/), installed with the package."""
