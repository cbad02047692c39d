"""The deployment kit holds together: prefect.yaml, compose.yaml, the image and the systemd units.

Read as an operator's tools would read them: every deployment's entry point imports and is a
Prefect flow that accepts the deployment's parameters (Prefect's own validation, as the server
applies it), its triggers are valid Prefect deployment triggers, and every flow has a
deployment; compose.yaml starts what the operations guide promises, with the full worker
environment and health checks; every ``CONSENTFLOW_*`` and ``PREFECT_*`` variable named anywhere
in the kit is one that consentflow or Prefect reads, and the values compose gives them pass both
settings' validation. ``docker compose config`` checks compose.yaml too where Docker Compose is
installed (``docker compose version`` succeeds); elsewhere that one step is left out.
"""

from __future__ import annotations

import configparser
import importlib
import inspect
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import Flow
from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
from pydantic import TypeAdapter

from consentflow import runs, settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "docs" / "deploy"
KIT = [ROOT / "prefect.yaml", ROOT / "compose.yaml", *sorted(DEPLOY.iterdir())]

NAMED = re.compile(r"\b(CONSENTFLOW|PREFECT)_[A-Z0-9_]*[A-Z0-9](_\*)?")
INTERPOLATED = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")

#: What the worker cannot do its job without (docs/operations.md, "The worker's environment").
WORKER_NEEDS = {
    "CONSENTFLOW_DATABASE_URL",
    "CONSENTFLOW_ENV",
    "CONSENTFLOW_SECRET_KEY",
    "CONSENTFLOW_PUBLIC_URL",
    "CONSENTFLOW_CONTROLLER_NAME",
    "CONSENTFLOW_SMTP_HOST",
    "CONSENTFLOW_SMTP_PORT",
    "CONSENTFLOW_SMTP_STARTTLS",
    "CONSENTFLOW_SMTP_USERNAME",
    "CONSENTFLOW_SMTP_PASSWORD",
    "CONSENTFLOW_MAIL_FROM",
    "CONSENTFLOW_COMPLIANCE_EMAIL",
    "CONSENTFLOW_ALERT_URLS",
    "PREFECT_API_URL",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY",
}
KEY = "k" * 40  # what an operator's .env gives CONSENTFLOW_SECRET_KEY


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _flow(entrypoint: str) -> Flow[Any, Any]:
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    fn = getattr(module, name)
    assert isinstance(fn, Flow), f"{entrypoint} is not a Prefect flow"
    return fn


def _prefect_names() -> set[str]:
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    return set(_get_valid_setting_names(Settings))


def _interpolate(value: str) -> str:
    """A compose value as compose gives it with no ``.env``, but for the required key."""

    def one(match: re.Match[str]) -> str:
        name, kind, default = match.groups()
        if kind == "?":
            assert name == "CONSENTFLOW_SECRET_KEY", f"{name} should not be required"
            return KEY
        return default or ""

    return INTERPOLATED.sub(one, value)


def test_every_deployment_runs_a_flow_that_accepts_its_parameters() -> None:
    spec = _load(ROOT / "prefect.yaml")
    deployed: set[str] = set()
    adapter = TypeAdapter(list[DeploymentTriggerTypes])
    for dep in spec["deployments"]:
        fn = _flow(dep["entrypoint"])
        deployed.add(fn.name)
        fn.validate_parameters(dep.get("parameters") or {})  # raises naming the parameter
        assert "params" not in (dep.get("parameters") or {}), "parameters are top-level"
        signature = inspect.signature(fn.fn).parameters
        triggers = dep.get("triggers") or []
        adapter.validate_python(triggers)
        for trigger in triggers:
            assert set(trigger.get("parameters") or {}) <= set(signature), trigger["name"]
            assert "consentflow.consent.withdrawn" not in trigger["expect"]
        assert fn.timeout_seconds, f"{fn.name} has no timeout_seconds"
        assert dep["work_pool"]["name"] == "consentflow-pool"
    assert deployed == set(runs.flow_names()), "one deployment per flow entry point"

    (loop,) = [d for d in spec["deployments"] if d["name"] == "continuous"]
    assert "concurrency_limit" not in loop, "slots bound the loops, not a limit that cancels"
    assert [s.get("interval") for s in loop["schedules"]] == [300]
    assert sorted(t["expect"][0] for t in loop["triggers"]) == [
        "consentflow.propagate.loop-ended",
        "prefect.flow-run.Crashed",
    ]
    alerted = spec["definitions"]["alerted_flows"]["prefect.resource.name"]
    assert set(alerted) == set(runs.flow_names()) - {"operator-alerts"}


def test_compose_starts_the_whole_kit_with_health_checks() -> None:
    compose = _load(ROOT / "compose.yaml")
    services = compose["services"]
    assert set(services) == {"db", "prefect-server", "deploy", "worker", "web"}
    dockerfile = ROOT / services["web"]["build"]["dockerfile"]
    assert dockerfile == DEPLOY / "Dockerfile" and dockerfile.is_file()
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies a missing {source}"
    for volume in services["db"]["volumes"]:
        if volume.startswith("./"):
            assert (ROOT / volume.split(":")[0]).is_file()

    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "consentflow deploy" in " ".join(services["deploy"]["command"])
    worker = services["worker"]
    assert "--with-healthcheck" in worker["command"]
    assert worker["command"][worker["command"].index("--pool") + 1] == "consentflow-pool"
    assert "/health" in " ".join(worker["healthcheck"]["test"])
    assert set(worker["environment"]) >= WORKER_NEEDS
    assert "/api/v1/health" in " ".join(services["web"]["healthcheck"]["test"])
    for name in ("worker", "web", "deploy"):
        assert services[name]["environment"]["CONSENTFLOW_DATABASE_URL"].startswith("postgresql")

    _docker_compose_config()


def _docker_compose_config() -> None:
    """``docker compose config`` where Docker Compose is installed; otherwise nothing."""
    if shutil.which("docker") is None:
        return
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        return
    env = {**os.environ, "CONSENTFLOW_SECRET_KEY": KEY}
    done = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_every_variable_the_kit_names_is_read_by_consentflow_or_prefect() -> None:
    known = {settings.env_name(name) for name in settings.Settings.model_fields}
    prefect_known = _prefect_names()
    unknown = []
    for path in KIT:
        for match in NAMED.finditer(path.read_text(encoding="utf-8")):
            name = match.group(0)
            pool = known if name.startswith("CONSENTFLOW_") else prefect_known
            family = name.endswith("_*")
            if not (any(k.startswith(name[:-1]) for k in pool) if family else name in pool):
                unknown.append(f"{path.relative_to(ROOT)}: {name}")
    assert unknown == []


@pytest.mark.parametrize("service", ["worker", "web", "deploy", "prefect-server"])
def test_compose_values_pass_both_settings_validations(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import Settings as PrefectSettings

    environment = _load(ROOT / "compose.yaml")["services"][service]["environment"]
    for name in list(os.environ):
        if name.startswith("CONSENTFLOW_"):
            monkeypatch.delenv(name)
    values = {name: _interpolate(str(value)) for name, value in environment.items()}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings.get_settings.cache_clear()
    try:
        read = settings.Settings()
        if "CONSENTFLOW_ENV" in values:
            assert read.env == "production" and read.secret_key == KEY
        prefect = PrefectSettings()
        if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in values:
            assert prefect.flows.heartbeat_frequency == 30
    finally:
        settings.get_settings.cache_clear()


def test_the_systemd_units_supervise_the_worker_and_the_web_app() -> None:
    env_file = DEPLOY / "consentflow.env"
    names = {
        line.split("=", 1)[0]
        for line in env_file.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    }
    assert names >= WORKER_NEEDS
    for unit, needle in (
        ("consentflow-worker.service", "prefect worker start --pool consentflow-pool"),
        ("consentflow-web.service", "consentflow serve"),
    ):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read(DEPLOY / unit)
        service = parser["Service"]
        assert needle in service["ExecStart"]
        assert service["EnvironmentFile"] == "/etc/consentflow/consentflow.env"
        assert service["Restart"] == "always"
        assert parser["Install"]["WantedBy"] == "multi-user.target"
    worker = configparser.ConfigParser(strict=False, interpolation=None)
    worker.read(DEPLOY / "consentflow-worker.service")
    assert "--with-healthcheck" in worker["Service"]["ExecStart"]
