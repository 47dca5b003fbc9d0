"""Deployment artefacts: the Dockerfile, its build context, the wheel, the manifests."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli.main import check
from gateway.config.lint import lint_settings
from gateway.config.loading import load_settings
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
KUBERNETES = ROOT / "config" / "kubernetes"
EXAMPLE = ROOT / "config" / "gateway.example.yaml"
EXAMPLE_ENV = {"CI_PIPELINE_SECRET": "ci-secret-for-tests-only",
               "PARTNER_ACME_SECRET": "acme-secret-for-tests-only"}
CONFIG_DIR = "/etc/pkjwt-gateway"
CONFIG_PATH = f"{CONFIG_DIR}/gateway.yaml"
SERVE_ARGV = ["pkjwt-gateway", "serve", "--config", CONFIG_PATH]
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|python3?-dev|libffi-dev)\b")
JOB = "pkjwt-gateway"  # the scrape job config/prometheus-rules.yml selects


# ---- a small Dockerfile reader ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str               # upper case: FROM, RUN, ...
    flags: tuple[str, ...]     # leading --name=value options (RUN --mount=..., COPY --from=...)
    value: str                 # the rest, continuation lines joined by one space
    line: int                  # where it starts


@dataclass(frozen=True, slots=True)
class Stage:
    base: str                  # the FROM image, global ARG defaults substituted
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comments, blank lines and parser directives dropped.

    A line ending in a backslash continues on the next; comment and blank lines inside a
    continuation are skipped, as Docker does. Raises ValueError for a dangling continuation.
    """
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        instructions.append(_instruction(" ".join(p for p in parts if p), start))
        parts = []
    if parts:
        raise ValueError(f"line {start}: a continuation runs past the end of the file")
    return instructions


def _instruction(logical: str, line: int) -> Instruction:
    keyword, _, rest = logical.partition(" ")
    flags: list[str] = []
    rest = rest.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.strip()
    return Instruction(keyword.upper(), tuple(flags), rest, line)


def split_stages(instructions: list[Instruction]) -> list[Stage]:
    """Group instructions by FROM, substituting global ARG defaults into each base image."""
    args: dict[str, str] = {}
    found: list[tuple[str, str | None, list[Instruction]]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                          lambda m: args.get(m.group(1) or m.group(2), ""), words[0])
            found.append((base, name, []))
        elif found:
            found[-1][2].append(instruction)
        elif instruction.keyword == "ARG":
            key, _, default = instruction.value.partition("=")
            args[key.strip()] = default.strip()
    return [Stage(base, name, tuple(body)) for base, name, body in found]


def exec_form(value: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, or None for shell form."""
    if not value.startswith("["):
        return None
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), value
    return parsed


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return split_stages(parse_dockerfile(DOCKERFILE.read_text()))


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def healthcheck_argv(stage: Stage) -> list[str]:
    instruction = stage.last("HEALTHCHECK")
    assert instruction is not None, "the runtime stage needs a HEALTHCHECK"
    kind, _, command = instruction.value.partition(" ")
    assert kind.upper() == "CMD", instruction
    argv = exec_form(command.strip())
    assert argv is not None, "HEALTHCHECK CMD in exec form: no shell in the way"
    return argv


def test_parser_joins_continuations_and_reads_flags() -> None:
    text = ("# syntax=docker/dockerfile:1\nARG BASE=python:3.11-slim\nFROM ${BASE} AS build\n"
            "RUN --mount=type=cache,target=/root \\\n    # a comment inside\n\n"
            "    pip wheel \\\n    -w /w .\nFROM $BASE\nUSER 10001\n")
    instructions = parse_dockerfile(text)
    assert [i.keyword for i in instructions] == ["ARG", "FROM", "RUN", "FROM", "USER"]
    run = instructions[2]
    assert run.flags == ("--mount=type=cache,target=/root",)
    assert run.value == "pip wheel -w /w ." and run.line == 4
    built = split_stages(instructions)
    assert [(s.base, s.name) for s in built] == [("python:3.11-slim", "build"),
                                                  ("python:3.11-slim", None)]
    assert built[1].last("USER") == Instruction("USER", (), "10001", 10)
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("RUN true \\\n")


def test_image_is_multi_stage_on_one_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.(1[1-9])(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?",
                            stage.base), stage.base
    # Compiled wheels built in one stage must match the interpreter of the other.
    assert stages[0].base == stages[-1].base


def test_runtime_stage_runs_as_a_fixed_non_root_uid(final: Stage) -> None:
    user = final.last("USER")
    assert user is not None
    uid, _, gid = user.value.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) >= 1000, user
    assert not gid or (gid.isdigit() and int(gid) != 0), user
    later = final.instructions[final.instructions.index(user):]
    assert not [i for i in later if i.keyword == "RUN"], "nothing may run as root after USER"


def test_entrypoint_serves_the_mounted_config_in_exec_form(final: Stage) -> None:
    entrypoint, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entrypoint is not None
    entry_argv = exec_form(entrypoint.value)
    cmd_argv = exec_form(cmd.value) if cmd is not None else []
    assert entry_argv is not None and cmd_argv is not None, "exec form: the gateway is PID 1"
    assert entry_argv + cmd_argv == SERVE_ARGV


def test_healthcheck_asks_admin_healthz_without_curl(final: Stage) -> None:
    argv = healthcheck_argv(final)
    assert argv[0] in ("python", "python3")
    command = " ".join(argv)
    assert "127.0.0.1:9100/healthz" in command
    assert not re.search(r"\b(curl|wget)\b", command)
    instruction = final.last("HEALTHCHECK")
    assert instruction is not None and any(f.startswith("--timeout=") for f in instruction.flags)


def test_runtime_stage_installs_wheels_only_without_build_tools(final: Stage) -> None:
    runs = final.all("RUN")
    for run in runs:
        assert not BUILD_TOOLS.search(run.value), run
    installs = [run for run in runs if re.search(r"\bpip\d? install\b", run.value)]
    assert installs, "the runtime stage installs the project's wheel"
    for run in installs:
        for needed in ("--no-index", "--no-cache-dir", "--find-links", "pkjwt-gateway"):
            assert needed in run.value, (needed, run)


def test_signals_ports_and_environment(final: Stage) -> None:
    stopsignal = final.last("STOPSIGNAL")
    assert stopsignal is None or stopsignal.value == "SIGTERM"
    exposed = {port.split("/")[0] for e in final.all("EXPOSE") for port in e.value.split()}
    assert {"8080", "9100"} <= exposed
    env = " ".join(e.value for e in final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    labels = " ".join(label.value for label in final.all("LABEL"))
    assert "org.opencontainers.image.title=" in labels


# ---- the build context, as .dockerignore makes it ---------------------------------------

def _glob_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            char = pattern[i]
            out.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
            i += 1
    return re.compile("".join(out))


def dockerignore_rules(text: str) -> list[tuple[re.Pattern[str], bool, str]]:
    """(pattern, negated, literal prefix) per line; later lines win, as in Docker."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = (line[1:] if negated else line).strip().strip("/")
        prefix = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        rules.append((_glob_regex(pattern), negated, prefix))
    return rules


def _excluded(relative: str, rules: list[tuple[re.Pattern[str], bool, str]]) -> bool:
    # A pattern matching a parent directory matches everything under it (BuildKit's
    # MatchesOrParentMatches).
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for regex, negated, _ in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negated
    return excluded


def build_context(root: Path) -> list[str]:
    """Relative paths of the files `docker build .` would send."""
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    negations = [prefix for _, negated, prefix in rules if negated]
    files: list[str] = []
    for directory, subdirs, names in os.walk(root):
        base = Path(directory).relative_to(root).as_posix()
        here = "" if base == "." else base + "/"
        # Skip an excluded directory no negation can reach into (.venv, .git, ...).
        subdirs[:] = [d for d in subdirs if not _excluded(here + d, rules) or any(
            n.startswith(here + d + "/") or (here + d).startswith(n) for n in negations)]
        files += [here + n for n in names if not _excluded(here + n, rules)]
    return sorted(files)


def copy_context(root: Path, destination: Path) -> None:
    for relative in build_context(root):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)


def test_dockerignore_rules_follow_docker_semantics() -> None:
    rules = dockerignore_rules("*\n!src/\n**/__pycache__\n!keep/**/*.txt\n")
    assert _excluded("README.md", rules) and _excluded(".venv/bin/python", rules)
    assert not _excluded("src/a.py", rules) and not _excluded("src/deep/b.py", rules)
    assert _excluded("src/__pycache__/a.pyc", rules)
    assert not _excluded("keep/x/y/z.txt", rules) and _excluded("keep/x/z.bin", rules)


def test_build_context_holds_the_sources_and_nothing_else(stages: list[Stage]) -> None:
    context = build_context(ROOT)
    sources = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "gateway").glob("*.py"))
    assert set(sources) <= set(context)
    assert {"pyproject.toml", "README.md", "LICENSE"} <= set(context)
    for path in context:
        assert path in ("pyproject.toml", "README.md", "LICENSE") or path.startswith(
            "gateway/"), path
        assert "__pycache__" not in path and not path.endswith((".pem", ".key")), path
    for stage in stages:
        for copy in stage.all("COPY"):
            if any(f.startswith("--from=") for f in copy.flags):
                continue
            for source in copy.value.split()[:-1]:
                assert any(p == source or p.startswith(source.rstrip("/") + "/")
                           for p in context), f"COPY {source}: not in the build context"


# ---- the wheel, built and installed as the image does ------------------------------------

def _run(argv: list[str], *, timeout: float, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                                 **(env or {})})
    assert result.returncode == 0, f"{argv}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


@dataclass(frozen=True, slots=True)
class ImageLike:
    venv: Path
    wheels: Path
    seconds: float

    @property
    def gateway(self) -> str:
        return str(self.venv / "bin" / "pkjwt-gateway")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


@pytest.fixture(scope="module")
def image_like() -> Iterator[ImageLike]:
    """The Dockerfile's two stages on this machine: wheels from the build context, then a
    fresh environment that installs them with --no-index, and loses pip as the image does.

    `pip wheel` resolves the dependencies from the package index (pip's cache makes later
    runs fast); the install sees no configuration and no index, only the wheel directory,
    so a dependency missing from it fails here as it would fail `docker build`.
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pkjwt-image-") as tmp:
        work = Path(tmp)
        context, wheels, venv = work / "context", work / "wheels", work / "venv"
        copy_context(ROOT, context)
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels),
              "."], cwd=context, timeout=300)
        _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
              "--no-cache-dir", "--no-index", "--find-links", str(wheels), "pkjwt-gateway"],
             env={"PIP_CONFIG_FILE": os.devnull}, timeout=180)
        _run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "--quiet", "--yes",
              "pip", "setuptools", "wheel"], timeout=60)
        yield ImageLike(venv, wheels, time.monotonic() - started)


@pytest.mark.slow
def test_wheel_installs_offline_and_runs_without_pip(image_like: ImageLike) -> None:
    names = sorted(p.name for p in image_like.wheels.glob("*.whl"))
    assert any(n.startswith("pkjwt_gateway-") for n in names), names
    assert not (image_like.venv / "bin" / "pip").exists()
    version = _run([image_like.gateway, "--version"], timeout=30)
    assert version.stdout.startswith("pkjwt-gateway "), version.stdout
    checked = _run([image_like.gateway, "check", "--config", str(EXAMPLE)],
                   env=EXAMPLE_ENV, timeout=60)
    assert ": ok, " in checked.stdout, checked.stdout
    print(f"image-like build and install: {image_like.seconds:.1f}s")


@pytest.mark.slow
def test_installed_gateway_serves_the_kubernetes_config_and_drains(
    image_like: ImageLike, tmp_path: Path
) -> None:
    """The pod's view: the ConfigMap volume, the Secret's variables, the image's HEALTHCHECK
    command and environment; then SIGTERM as PID 1 gets it."""
    config = materialise_config_volume(tmp_path)
    port, admin = free_port(), free_port()
    text = config.read_text()
    # Loopback ports of our own, and the memory ledger: the Redis Service is not here.
    for old, new, count in ((" port: 8080", f" port: {port}", 1),
                            (" port: 9100", f" port: {admin}", 1),
                            ("host: 0.0.0.0", "host: 127.0.0.1", 2),
                            ("store: redis", "store: memory", 1)):
        assert text.count(old) == count, old
        text = text.replace(old, new)
    config.write_text(text)
    env = {**os.environ, **secret_env(), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONUNBUFFERED": "1"}
    argv = healthcheck_argv(split_stages(parse_dockerfile(DOCKERFILE.read_text()))[-1])
    probe = [image_like.python, *[a.replace(":9100/", f":{admin}/") for a in argv[1:]]]
    proc = subprocess.Popen([image_like.gateway, "serve", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(probe, capture_output=True, timeout=10).returncode != 0:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "HEALTHCHECK never passed"
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as answer:
            assert answer.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
    assert subprocess.run(probe, capture_output=True, timeout=10).returncode != 0


# ---- the Kubernetes manifests -------------------------------------------------------------

def load_manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object in config/kubernetes by (kind, name)."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                key = (document["kind"], document["metadata"]["name"] if "metadata" in
                       document else path.name)
                assert key not in objects, key
                objects[key] = document
    return objects


MANIFESTS = load_manifests()


def one(kind: str) -> dict[str, Any]:
    found = [obj for (k, _), obj in MANIFESTS.items() if k == kind]
    assert len(found) == 1, (kind, len(found))
    return found[0]


def deployment() -> dict[str, Any]:
    return one("Deployment")


def container() -> dict[str, Any]:
    containers = deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def pod_labels() -> dict[str, str]:
    return dict(deployment()["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return bool(selector["matchLabels"]) and all(
        labels.get(k) == v for k, v in selector["matchLabels"].items())


def secret_env() -> dict[str, str]:
    """The variables the Deployment takes from the Secret, with stand-in values."""
    env: dict[str, str] = {}
    for variable in container()["env"]:
        ref = variable["valueFrom"]["secretKeyRef"]
        env[variable["name"]] = f"test-value-of-{ref['key']}"
    return env


def materialise_config_volume(directory: Path) -> Path:
    """Write the ConfigMap's keys where the volume's items put them; returns gateway.yaml."""
    volumes = {v["name"]: v for v in deployment()["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container()["volumeMounts"] if m["mountPath"] == CONFIG_DIR)
    source = volumes[mount["name"]]["configMap"]
    data = MANIFESTS[("ConfigMap", source["name"])]["data"]
    for item in source.get("items") or [{"key": k, "path": k} for k in data]:
        target = directory / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]])
    return directory / Path(CONFIG_PATH).name


def gateway_config(tmp_path: Path) -> Any:
    return load_settings(materialise_config_volume(tmp_path), env=secret_env())


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {"secret.example.yaml"}
    assert [i["name"] for i in kustomization["images"]] == [container()["image"].split(":")[0]]


def test_configmap_config_passes_check_with_a_redis_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = materialise_config_volume(tmp_path)
    for name, value in secret_env().items():
        monkeypatch.setenv(name, value)
    assert check(path, strict=False, workers=2) == 0, capsys.readouterr().out
    settings = load_settings(path)
    assert settings.replay.store == "redis"
    assert settings.replay.password_value() == secret_env()["REDIS_PASSWORD"]
    # The one accepted warning: probes and scrapes must reach the admin port.
    assert [where for where, _ in lint_settings(settings)] == ["admin.host"]


def test_every_env_tag_comes_from_the_secret() -> None:
    data = one("ConfigMap")["data"]["gateway.yaml"]
    wanted = set(re.findall(r"!env\s+([A-Za-z_][A-Za-z0-9_]*)", data))
    env = {v["name"]: v for v in container()["env"]}
    assert set(env) == wanted
    example = MANIFESTS[("Secret", "pkjwt-gateway-secrets")]
    for variable in env.values():
        assert "value" not in variable, "no secret value in the Deployment"
        ref = variable["valueFrom"]["secretKeyRef"]
        assert ref["name"] == example["metadata"]["name"] and not ref.get("optional")
        assert ref["key"] in example["stringData"]
    assert set(example["stringData"].values()) == {"REPLACE-ME"}


def test_ports_and_probes_match_the_gateway_config(tmp_path: Path) -> None:
    settings = gateway_config(tmp_path)
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"http": settings.listen.port, "admin": settings.admin.port}
    assert settings.listen.host == "0.0.0.0" and settings.admin.host == "0.0.0.0"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container()[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == ports["admin"]
    exposed = {p for e in split_stages(parse_dockerfile(DOCKERFILE.read_text()))[-1]
               .all("EXPOSE") for p in e.value.split()}
    assert {str(p) for p in ports.values()} <= exposed


def test_container_runs_the_image_command_on_the_mounted_config() -> None:
    assert ["pkjwt-gateway", *container()["args"]] == SERVE_ARGV
    assert "command" not in container(), "keep the image's ENTRYPOINT"
    mounts = {m["mountPath"]: m for m in container()["volumeMounts"]}
    assert mounts[CONFIG_DIR].get("readOnly") is True and "subPath" not in mounts[CONFIG_DIR]
    volumes = {v["name"]: v for v in deployment()["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_pod_is_locked_down_and_matches_the_image_user(final: Stage) -> None:
    pod = deployment()["spec"]["template"]["spec"]
    effective = {**pod["securityContext"], **container()["securityContext"]}
    assert effective["runAsNonRoot"] is True
    assert effective["readOnlyRootFilesystem"] is True
    assert effective["allowPrivilegeEscalation"] is False
    assert effective["capabilities"]["drop"] == ["ALL"] and "add" not in effective["capabilities"]
    assert effective["seccompProfile"]["type"] == "RuntimeDefault"
    user = final.last("USER")
    assert user is not None and str(effective["runAsUser"]) == user.value.split(":")[0]
    assert pod["automountServiceAccountToken"] is False


def test_replicas_resources_and_spread() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] >= 2
    assert selects(spec["selector"], pod_labels())
    resources = container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    spread = spec["template"]["spec"]["topologySpreadConstraints"]
    assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in spread)
    assert all(selects(c["labelSelector"], pod_labels()) for c in spread)


def test_termination_grace_outlasts_prestop_and_drain(tmp_path: Path) -> None:
    grace = gateway_config(tmp_path).listen.shutdown_grace
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    total = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert total > float(command[1]) + grace, (total, command, grace)


def test_pdb_and_services_select_the_pods(tmp_path: Path) -> None:
    settings = gateway_config(tmp_path)
    pdb = one("PodDisruptionBudget")["spec"]
    assert selects(pdb["selector"], pod_labels())
    assert pdb.get("minAvailable") == 1 or pdb.get("maxUnavailable") == 1
    public = MANIFESTS[("Service", "pkjwt-gateway")]["spec"]
    assert public["selector"] == pod_labels()
    assert [(p["name"], p["port"], p["targetPort"]) for p in public["ports"]] == [
        ("http", settings.listen.port, "http")]
    admin = MANIFESTS[("Service", "pkjwt-gateway-admin")]
    assert admin["spec"]["selector"] == pod_labels() and admin["spec"]["clusterIP"] == "None"
    assert [p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"]


def test_metrics_are_scraped_from_the_admin_port(tmp_path: Path) -> None:
    settings = gateway_config(tmp_path)
    monitor = one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    admin = MANIFESTS[("Service", "pkjwt-gateway-admin")]
    assert selects(monitor["spec"]["selector"], admin["metadata"]["labels"])
    assert not selects(monitor["spec"]["selector"],
                       MANIFESTS[("Service", "pkjwt-gateway")]["metadata"]["labels"])
    assert admin["metadata"]["labels"][monitor["spec"]["jobLabel"]] == JOB
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == admin["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.admin.port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_network_policy_keeps_the_admin_port_to_monitoring() -> None:
    policy = one("NetworkPolicy")["spec"]
    assert selects(policy["podSelector"], pod_labels())
    for rule in policy["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if "admin" in ports:
            assert rule.get("from"), "the admin port is not open to everyone"
            assert all("namespaceSelector" in peer for peer in rule["from"])
    assert any({p["port"] for p in rule["ports"]} == {"http"} for rule in policy["ingress"])
