"""The README's workload identity federation recipes, run as far as loopback allows.

Each recipe has a platform side and a gateway side, fenced blocks after
``<!-- recipe: NAME/platform -->``, ``<!-- recipe: NAME/gateway -->`` and, when the request
is not part of the platform's own file, ``<!-- recipe: NAME/request -->``. The gateway YAML
is loaded as printed, then with the platform's addresses swapped for a stand-in platform on
https://127.0.0.1 (tests/support/platform_issuer.py). The token the platform side asks for
(its audience, subject, lifetime) is minted there and posted with the form fields of the
recipe's curl, to a real gateway in front of a recording backend. Blocks after
``<!-- example: NAME -->`` must load, and the subject-pattern table must hold.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shlex
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
import trustme
import yaml

from gateway.config.lint import lint_settings
from gateway.config.loading import load_settings
from gateway.config.settings import Settings
from gateway.core.subject_pattern import compile_subject_pattern
from gateway.web.app import Gateway, create_gateway
from tests.conftest import ROOMY_LIMITS, Backend, GatewayStarter, Seen
from tests.support.platform_issuer import KINDS, Kind, PlatformIssuer, platform_issuer

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## Workload identity federation"
# Where the recipes' curl sends its requests: the gateway's public address and issuer.
GATEWAY_ISSUER = "https://idp.example.com"
TOKEN_PATH = "/oauth2/token"
BACKEND_SECRET = "recipe-backend-secret"  # test-only fixture value
RECIPES: tuple[Kind, ...] = KINDS  # github, gitlab, kubernetes, spiffe
KEYS_TIMEOUT = 10.0  # seconds for the gateway's first fetch of the issuer's keys
# The workloads the stand-in platforms mint tokens for, as the recipes' prose describes them.
GITHUB_REPOSITORY: dict[str, Any] = {
    "owner": "acme", "owner_id": "1234", "repo": "api", "repo_id": "5678"}
GITLAB_PROJECT: dict[str, Any] = {
    "project_path": "acme/api", "namespace_path": "acme", "project_id": "42",
    "namespace_id": "72", "ref": "main", "ref_type": "branch"}
SPIFFE_PATH = "/ns/prod/sa/deploy-api"
# What each recipe's gateway YAML names that only exists on the real platform.
REAL_ADDRESSES = {
    "github": ("https://token.actions.githubusercontent.com",),
    "gitlab": ("https://gitlab.com",),
    "kubernetes": ("https://kubernetes.default.svc.cluster.local",
                   "https://kubernetes.default.svc/openid/v1/jwks"),
    "spiffe": ("https://spire.example.org:8443",),
}
# `check` warnings each recipe draws, by the setting they name (README: every reuse trust).
EXPECTED_WARNINGS = {
    "github": [], "gitlab": [],
    "kubernetes": ["clients.deploy-api.federated[0].replay"],
    "spiffe": ["clients.deploy-api.federated[0].replay"],
}

_MARKED = re.compile(
    r"^(?P<indent>[ ]*)<!-- (?P<kind>recipe|example): (?P<name>[\w/-]+) -->\n"
    r"(?P=indent)```(?P<lang>\w+)\n(?P<body>.*?)\n(?P=indent)```$",
    re.MULTILINE | re.DOTALL)
_CA_FILE = re.compile(r"^(?P<key>\s*ca_file:\s*)\S+$", re.MULTILINE)


# -- Reading the README ---------------------------------------------------------------------

def federation_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def marked_blocks(kind: str) -> dict[str, tuple[str, str]]:
    """name -> (language, body) of every fenced block marked ``<!-- kind: name -->``."""
    found: dict[str, tuple[str, str]] = {}
    for match in _MARKED.finditer(federation_section()):
        if match.group("kind") != kind:
            continue
        name, indent = match.group("name"), match.group("indent")
        assert name not in found, f"{kind} {name} is marked twice"
        body = "\n".join(line.removeprefix(indent) for line in match.group("body").split("\n"))
        found[name] = (match.group("lang"), body + "\n")
    return found


def recipe_block(name: str, part: str, lang: str) -> str:
    block = marked_blocks("recipe").get(f"{name}/{part}")
    assert block is not None, f"README: no block marked <!-- recipe: {name}/{part} -->"
    assert block[0] == lang, (name, part, block[0])
    return block[1]


def logical_lines(script: str) -> list[str]:
    """Shell lines with backslash-newline continuations joined."""
    return script.replace("\\\n", " ").splitlines()


@dataclass(frozen=True)
class CurlPost:
    """A curl POST to the gateway: where, and its form fields as curl sends them."""

    url: str
    fields: tuple[tuple[str, str], ...]  # (name, value) in order; a value may be "$VAR"
    encoded: frozenset[str]  # fields given with --data-urlencode

    def value(self, name: str) -> str:
        values = [value for field, value in self.fields if field == name]
        assert len(values) == 1, (name, self.fields)
        return values[0]

    def body(self, token: str) -> bytes:
        """The body curl sends, with the shell's token variable expanded to ``token``."""
        parts = []
        for name, value in self.fields:
            if value.startswith("$"):
                value = token
            parts.append(f"{name}={quote(value, safe='') if name in self.encoded else value}")
        return "&".join(parts).encode()


def curl_post(script: str) -> CurlPost:
    """The curl command of ``script`` that sends a client assertion."""
    lines = [line for line in logical_lines(script) if "client_assertion=" in line]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0])
    fields: list[tuple[str, str]] = []
    encoded: set[str] = set()
    urls = []
    options = iter(words)
    for word in options:
        if word in ("-d", "--data", "--data-raw", "--data-urlencode"):
            name, _, value = next(options).partition("=")
            fields.append((name, value))
            if word == "--data-urlencode":
                encoded.add(name)
        elif word in ("-H", "--header", "-o", "--output"):
            next(options)
        elif re.match(r"https?://", word):
            urls.append(word)
    assert len(urls) == 1, urls
    return CurlPost(urls[0], tuple(fields), frozenset(encoded))


# -- The platforms ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PlatformSide:
    """What the recipe's platform side asks for, and the request the workload sends."""

    audience: str
    post: CurlPost
    # (stand-in issuer, audience, the recipe's loaded settings) -> a token
    mint: Callable[[PlatformIssuer, str, Settings], str]
    assertion_source: str  # what the recipe's curl sends as client_assertion


def github_side() -> PlatformSide:
    workflow = yaml.safe_load(recipe_block("github", "platform", "yaml"))
    (job,) = workflow["jobs"].values()
    assert job["permissions"]["id-token"] == "write"
    environment = job.get("environment")
    (script,) = [step["run"] for step in job["steps"] if "client_assertion=" in step.get("run", "")]
    request = next(line for line in logical_lines(script) if "ACTIONS_ID_TOKEN_REQUEST_URL" in line)
    assert "$ACTIONS_ID_TOKEN_REQUEST_TOKEN" in request
    variable = re.match(r"\s*(\w+)=\$\(curl", request)
    audience = re.search(r"\$ACTIONS_ID_TOKEN_REQUEST_URL&audience=([^\"&\s]+)", request)
    assert variable and audience, request

    def mint(issuer: PlatformIssuer, aud: str, settings: Settings) -> str:
        return issuer.github_token(aud, environment=environment, event_name="push",
                                   **GITHUB_REPOSITORY)

    return PlatformSide(audience.group(1), curl_post(script), mint, f"${variable.group(1)}")


def gitlab_side() -> PlatformSide:
    pipeline = yaml.safe_load(recipe_block("gitlab", "platform", "yaml"))
    (job,) = pipeline.values()
    ((variable, token),) = job["id_tokens"].items()
    (script,) = [line for line in job["script"] if "client_assertion=" in line]

    def mint(issuer: PlatformIssuer, aud: str, settings: Settings) -> str:
        return issuer.gitlab_token(aud, **GITLAB_PROJECT)

    return PlatformSide(token["aud"], curl_post(script), mint, f"${variable}")


def kubernetes_side() -> PlatformSide:
    documents = list(yaml.safe_load_all(recipe_block("kubernetes", "platform", "yaml")))
    kinds = {document["kind"]: document for document in documents}
    account, pod = kinds["ServiceAccount"]["metadata"], kinds["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    assert spec["serviceAccountName"] == account["name"]
    (volume,) = [v for v in spec["volumes"] if "projected" in v]
    (source,) = [s["serviceAccountToken"] for s in volume["projected"]["sources"]]
    (container,) = spec["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    token_path = f"{mount['mountPath'].rstrip('/')}/{source['path']}"
    lifetime = int(source["expirationSeconds"])
    namespace = kinds["Deployment"]["metadata"]["namespace"]
    assert account["namespace"] == namespace

    def mint(issuer: PlatformIssuer, aud: str, settings: Settings) -> str:
        # The cluster's service account has the uid the gateway recipe pins, if it pins one.
        pinned = {key: values[0] for client in settings.clients.values()
                  for trust in client.federated for key, values in trust.claims.items()}
        uid = pinned.get("/kubernetes.io/serviceaccount/uid")
        shape: dict[str, Any] = {} if uid is None else {"sa_uid": uid}
        return issuer.kubernetes_token(aud, namespace=namespace,
                                       service_account=account["name"], lifetime=lifetime,
                                       **shape)

    return PlatformSide(source["audience"],
                        curl_post(recipe_block("kubernetes", "request", "sh")), mint,
                        f"$(cat {token_path})")


def spiffe_side() -> PlatformSide:
    script = recipe_block("spiffe", "platform", "sh")
    fetch = next(line for line in logical_lines(script) if "spire-agent api fetch jwt" in line)
    variable = re.match(r"\s*(\w+)=\$\(spire-agent api fetch jwt ", fetch)
    audience = re.search(r" -audience (\S+)", fetch)
    assert variable and audience and " -socketPath " in fetch, fetch

    def mint(issuer: PlatformIssuer, aud: str, settings: Settings) -> str:
        return issuer.spiffe_token(aud, path=SPIFFE_PATH)

    return PlatformSide(audience.group(1), curl_post(script), mint, f"${variable.group(1)}")


PLATFORM_SIDES: dict[str, Callable[[], PlatformSide]] = {
    "github": github_side, "gitlab": gitlab_side, "kubernetes": kubernetes_side,
    "spiffe": spiffe_side}


# -- The gateway side -------------------------------------------------------------------------

def wrapped(recipe_yaml: str, backend_url: str, *, private_networks: bool) -> str:
    """A whole configuration: the gateway's own settings, then the recipe's sections."""
    return textwrap.dedent(f"""\
        issuer: {GATEWAY_ISSUER}
        backend: {{url: "{backend_url}", timeout: 2s}}
        endpoints: [{TOKEN_PATH}]
        policy: {{algorithms: [ES256]}}
        {ROOMY_LIMITS}
        jwks_fetch: {{allow_private_networks: {str(private_networks).lower()}}}
        """) + recipe_yaml


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    env = {name: BACKEND_SECRET for name in re.findall(r"!env (\w+)", text)}
    return load_settings(path, env=env)


def with_ca_file(text: str, ca_file: str) -> str:
    """Every ca_file of ``text`` pointed at ``ca_file`` (the printed paths exist in pods)."""
    return _CA_FILE.sub(lambda match: match.group("key") + ca_file, text)


def insert_after(text: str, line_start: str, line: str) -> str:
    """``line`` after the first line beginning (indentation aside) with ``line_start``."""
    lines = text.split("\n")
    for index, existing in enumerate(lines):
        if existing.lstrip().startswith(line_start):
            indent = existing[:len(existing) - len(existing.lstrip())]
            lines.insert(index + 1, indent + line)
            return "\n".join(lines)
    raise AssertionError(f"no line starting with {line_start!r}")


def on_loopback(name: str, text: str, issuer: PlatformIssuer, bearer_file: Path) -> str:
    """The recipe's gateway YAML with the stand-in platform's addresses and files."""
    for real in REAL_ADDRESSES[name]:
        assert text.count(real) == 1, (name, real)
    if name == "kubernetes":
        text = text.replace(REAL_ADDRESSES[name][1], issuer.jwks_uri)
        text = text.replace(REAL_ADDRESSES[name][0], issuer.issuer)
        token_file = re.search(r"bearer_token_file: (\S+)", text)
        assert token_file is not None
        text = text.replace(token_file.group(0), f"bearer_token_file: {bearer_file}")
        return with_ca_file(text, issuer.ca_file)
    if name == "spiffe":
        text = text.replace(REAL_ADDRESSES[name][0], issuer.jwks_uri)
        return insert_after(text, "bundle_endpoint:", f"ca_file: {issuer.ca_file}")
    text = text.replace(REAL_ADDRESSES[name][0], issuer.issuer)
    return insert_after(text, f"issuer: {issuer.issuer}", f"ca_file: {issuer.ca_file}")


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    path = tmp_path / "platform-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


@dataclass
class Recipe:
    """One recipe running: its platform stand-in, settings and gateway."""

    name: str
    side: PlatformSide
    issuer: PlatformIssuer
    settings: Settings
    gateway: Gateway
    url: str
    audit: io.StringIO
    backend: Backend

    @property
    def client_id(self) -> str:
        (client_id,) = self.settings.clients
        return client_id

    @property
    def trust(self) -> Any:
        (trust,) = self.settings.clients[self.client_id].federated
        return trust

    def mint(self, audience: str) -> str:
        """A token of the recipe's workload, from the stand-in platform, for ``audience``."""
        return self.side.mint(self.issuer, audience, self.settings)

    async def post(self, token: str, post: CurlPost | None = None) -> tuple[int, Any]:
        post = post or self.side.post
        parts = urlsplit(post.url)
        async with aiohttp.ClientSession() as session, session.post(
                self.url + parts.path, data=post.body(token),
                headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
            return response.status, await response.json()

    def audit_lines(self) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.audit.getvalue().splitlines()]
        return [line for line in lines if "event" not in line]  # decisions, not key events

    def metric(self, name: str, **labels: str) -> float:
        self.gateway.metrics.flush()
        value = self.gateway.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


PLATFORM_OPTIONS: dict[str, dict[str, Any]] = {
    "github": {}, "gitlab": {},
    "kubernetes": {"bearer_token": "gateway-service-account-token"},
    "spiffe": {"trust_domain": "example.org", "x509_authority": True, "refresh_hint": 300},
}


@pytest.fixture(params=RECIPES)
async def recipe(request: pytest.FixtureRequest, tmp_path: Path, backend: Backend,
                 gateway_server: GatewayStarter) -> AsyncIterator[Recipe]:
    name: Kind = request.param
    side = PLATFORM_SIDES[name]()
    async with platform_issuer(tmp_path, name, **PLATFORM_OPTIONS[name]) as issuer:
        bearer_file = tmp_path / "gateway-token"
        bearer_file.write_text(f"{issuer.bearer_token or 'unused'}\n")
        recipe_yaml = on_loopback(name, recipe_block(name, "gateway", "yaml"), issuer,
                                  bearer_file)
        # In-cluster addresses are allowed by the recipe's own issuer setting; the others
        # are public on their platforms and only the stand-in is on loopback.
        settings = load(tmp_path, wrapped(recipe_yaml, backend.url,
                                          private_networks=name != "kubernetes"))
        audit = io.StringIO()
        gateway = create_gateway(settings, audit_stream=audit)
        server = await gateway_server(gateway)
        await wait_for_keys(gateway)
        yield Recipe(name, side, issuer, settings, gateway,
                     str(server.make_url("")).rstrip("/"), audit, backend)


async def wait_for_keys(gateway: Gateway) -> None:
    sources = gateway.runtime.federation.sources()
    assert sources, "the recipe declares no issuer the gateway serves"
    async with asyncio.timeout(KEYS_TIMEOUT):
        while not all(source.current() is not None for source in sources):
            await asyncio.sleep(0.02)


def basic(client_id: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{BACKEND_SECRET}".encode()).decode()


def assert_forwarded(seen: Seen, client_id: str) -> None:
    form = dict(seen.form())
    assert form == {"grant_type": "client_credentials"}
    assert seen.headers["Authorization"] == basic(client_id)


# -- The README's structure -------------------------------------------------------------------

def test_every_recipe_has_its_marked_blocks() -> None:
    names = set(marked_blocks("recipe"))
    for name in RECIPES:
        assert {f"{name}/platform", f"{name}/gateway"} <= names, name
    assert names <= {f"{name}/{part}" for name in RECIPES
                     for part in ("platform", "gateway", "request")}


@pytest.mark.parametrize("name", RECIPES)
def test_platform_side_matches_gateway_side(name: str, tmp_path: Path, ca_file: str) -> None:
    """The audience the platform mints for, the client and assertion the curl sends, and
    the endpoint it posts to are the gateway recipe's."""
    side = PLATFORM_SIDES[name]()
    text = with_ca_file(recipe_block(name, "gateway", "yaml"), ca_file)
    settings = load(tmp_path, wrapped(text, "https://legacy.example.com", private_networks=False))
    (client_id,) = settings.clients
    (trust,) = settings.clients[client_id].federated
    assert side.audience == trust.audience == GATEWAY_ISSUER
    assert side.post.value("client_id") == client_id
    assert side.post.value("client_assertion") == side.assertion_source
    assert side.post.value("grant_type") == "client_credentials"
    kind = "jwt-spiffe" if name == "spiffe" else "jwt-bearer"
    assert side.post.value("client_assertion_type") == (
        f"urn:ietf:params:oauth:client-assertion-type:{kind}")
    parts = urlsplit(side.post.url)
    assert f"{parts.scheme}://{parts.netloc}" == GATEWAY_ISSUER
    assert parts.path in settings.endpoints


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_as_printed_with_only_its_expected_warnings(
        name: str, tmp_path: Path, ca_file: str) -> None:
    text = with_ca_file(recipe_block(name, "gateway", "yaml"), ca_file)
    settings = load(tmp_path, wrapped(text, "https://legacy.example.com", private_networks=False))
    warnings = [path for path, _ in lint_settings(settings)]
    assert warnings == EXPECTED_WARNINGS[name], lint_settings(settings)


def test_every_example_loads(tmp_path: Path, ca_file: str) -> None:
    examples = marked_blocks("example")
    assert {"overview", "shadow"} <= set(examples)
    for name, (lang, body) in examples.items():
        assert lang == "yaml", name
        settings = load(tmp_path, wrapped(with_ca_file(body, ca_file),
                                          "https://legacy.example.com", private_networks=False))
        assert settings.clients, name


def pattern_rows() -> list[tuple[str, list[str], list[str]]]:
    section = federation_section()
    start = section.index("<!-- subject-patterns -->")
    table = section[start:section.index("\n\n", start)].splitlines()[3:]
    rows = []
    for line in table:
        cells = [re.findall(r"`([^`]+)`", cell) for cell in line.strip("|").split("|")]
        (pattern,), matches, misses = cells
        rows.append((pattern, matches, misses))
    return rows


@pytest.mark.parametrize(("pattern", "matches", "misses"), pattern_rows(),
                         ids=[row[0] for row in pattern_rows()])
def test_subject_pattern_table(pattern: str, matches: list[str], misses: list[str]) -> None:
    compiled = compile_subject_pattern(pattern)
    assert matches and misses
    assert [subject for subject in matches if not compiled.matches(subject)] == []
    assert [subject for subject in misses if compiled.matches(subject)] == []


# -- The recipes on loopback ------------------------------------------------------------------

async def test_recipe_token_is_accepted_and_forwarded(recipe: Recipe) -> None:
    token = recipe.mint(recipe.side.audience)
    status, body = await recipe.post(token)
    assert status == 200, body
    assert body["access_token"] == "at-1"
    assert_forwarded(recipe.backend.seen[-1], recipe.client_id)
    (line,) = recipe.audit_lines()
    trust = recipe.trust
    assert {key: line.get(key) for key in ("result", "reason", "client", "method", "trust",
                                           "issuer")} == {
        "result": "accepted", "reason": "ok", "client": recipe.client_id,
        "method": "federated", "trust": trust.name, "issuer": trust.issuer}
    sub = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["sub"]
    assert line["subject"] == sub and line["key_thumbprint"]
    assert recipe.metric("pkjwt_federation_decisions_total", client=recipe.client_id,
                         trust=trust.name, mode="enforce", result="match") == 1
    assert recipe.metric("pkjwt_client_auth_total", client=recipe.client_id,
                         endpoint=TOKEN_PATH, result="accepted", reason="ok",
                         method="federated") == 1


async def test_recipe_replay_mode(recipe: Recipe) -> None:
    """single_use refuses the same token again; reuse (a re-read projected token, a
    re-served SVID) accepts it until it expires."""
    token = recipe.mint(recipe.side.audience)
    assert (await recipe.post(token))[0] == 200
    status, body = await recipe.post(token)
    if recipe.trust.replay == "reuse":
        assert status == 200, body
        assert len(recipe.backend.seen) == 2
    else:
        assert (status, body["error"]) == (401, "invalid_client")
        assert recipe.audit_lines()[-1]["reason"] == "replayed"
        assert len(recipe.backend.seen) == 1


async def test_recipe_refuses_a_token_for_another_audience(recipe: Recipe) -> None:
    token = recipe.mint("https://other-relying-party.example")
    status, body = await recipe.post(token)
    assert (status, body["error"]) == (401, "invalid_client")
    line = recipe.audit_lines()[-1]
    assert (line["reason"], line["issuer"]) == ("bad_audience", recipe.trust.issuer)
    assert "trust" not in line and recipe.backend.seen == []
    assert recipe.metric("pkjwt_federation_decisions_total", client=recipe.client_id,
                         trust=recipe.trust.name, mode="enforce", result="mismatch") == 1


@pytest.mark.parametrize("recipe", ["github"], indirect=True)
async def test_an_exact_subject_finds_its_client_without_client_id(recipe: Recipe) -> None:
    post = recipe.side.post
    without = CurlPost(post.url, tuple(f for f in post.fields if f[0] != "client_id"),
                       post.encoded)
    status, body = await recipe.post(recipe.mint(recipe.side.audience),
                                     without)
    assert status == 200, body
    assert recipe.audit_lines()[-1]["client"] == recipe.client_id


@pytest.mark.parametrize("recipe", ["kubernetes"], indirect=True)
async def test_kubernetes_keys_are_fetched_with_the_gateway_token(recipe: Recipe) -> None:
    asked = [entry for entry in recipe.issuer.asked if entry.path == recipe.issuer.jwks_path]
    assert asked, recipe.issuer.asked
    assert {entry.headers.get("Authorization") for entry in asked} == {
        f"Bearer {recipe.issuer.bearer_token}"}
