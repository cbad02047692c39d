"""``python -m consentflow.settings > docs/configuration.md``: print the configuration reference."""

from consentflow.settings.reference import reference_markdown

print(reference_markdown(), end="")
