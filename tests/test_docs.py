"""The docs agree with the code: the configuration reference is generated from ``Settings``, and
every ``CONSENTFLOW_*`` variable the README or docs/ mention is one consentflow reads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from consentflow import settings

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"
REGENERATE = "python -m consentflow.settings > docs/configuration.md"

# A name, or a family written as ``CONSENTFLOW_SMTP_*``.
MENTION = re.compile(r"CONSENTFLOW_[A-Z0-9_]*[A-Z0-9](_\*)?")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_configuration_reference_is_generated_from_settings() -> None:
    committed = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    assert committed == settings.reference_markdown(), (
        f"docs/configuration.md is stale: regenerate it with `{REGENERATE}`"
    )


def test_python_m_settings_prints_the_reference() -> None:
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "consentflow.settings"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout == settings.reference_markdown()


def test_every_setting_is_described() -> None:
    undocumented = [
        name for name, info in settings.Settings.model_fields.items() if not info.description
    ]
    assert undocumented == [], "give these settings a Field(description=...)"


def test_every_consentflow_variable_in_the_docs_exists() -> None:
    known = {settings.env_name(name) for name in settings.Settings.model_fields}
    known |= {var.name for var in settings.TEST_VARIABLES}
    unknown = []
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        for match in MENTION.finditer(text):
            name = match.group(0)
            if name.endswith("_*"):
                ok = any(k.startswith(name[:-1]) for k in known)
            else:
                ok = name in known
            if not ok:
                unknown.append(f"{page.relative_to(ROOT)}: {name}")
    assert unknown == [], "not read by consentflow (see src/consentflow/settings/_model.py)"
