"""Rewrite migration 0001 from the models. ONLY until the first release.

Before consentflow has users, the schema is one initial migration regenerated from ``models.py``
(``python -m consentflow.migrations.regen_initial``). The day a release ships, delete this file:
from then on every schema change is a new revision that upgrades existing databases.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

HERE = Path(__file__).parent
TARGET = HERE / "versions" / "0001_initial_schema.py"


def main() -> None:
    from alembic import command

    from consentflow.db import alembic_config, make_engine

    TARGET.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/regen.db")
        command.revision(
            alembic_config(engine), message="initial schema", autogenerate=True, rev_id="0001"
        )
        engine.dispose()
    text = TARGET.read_text()
    marker = "sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_head'))\n    )\n"
    genesis = (
        "    # The chain starts from the genesis hash; appends lock and advance this one row.\n"
        "    op.execute(\n"
        '        sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :h)").bindparams(\n'
        '            h="0" * 64\n'
        "        )\n"
        "    )\n"
    )
    assert marker in text, "audit_head table not found in the generated migration"
    text = text.replace(marker, marker + genesis, 1)
    lines = [ln for ln in text.splitlines() if not ln.startswith("Create Date:")]
    TARGET.write_text("\n".join(lines) + "\n")
    import subprocess
    import sys

    for args in (["check", "--fix", "-q"], ["format", "-q"]):
        subprocess.run(
            [sys.executable, "-m", "ruff", *args, str(TARGET)], check=False, capture_output=True
        )
    print(f"rewrote {TARGET}")


if __name__ == "__main__":
    main()
