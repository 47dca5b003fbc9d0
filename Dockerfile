# syntax=docker/dockerfile:1
#
# pkjwt-gateway container image.
#
#   docker build -t pkjwt-gateway:0.1.0 .
#   docker run --rm -p 8080:8080 \
#     -v "$PWD/gateway.yaml:/etc/pkjwt-gateway/gateway.yaml:ro" \
#     -v "$PWD/keys:/etc/pkjwt-gateway/keys:ro" \
#     -e CI_PIPELINE_SECRET -e REDIS_PASSWORD \
#     pkjwt-gateway:0.1.0
#
# Mounts (nothing is baked in; the image holds no configuration and no secret):
#   /etc/pkjwt-gateway/gateway.yaml  the configuration, read-only. CMD points here.
#   /etc/pkjwt-gateway/keys/         public JWKS files named by `jwks_file` (relative paths
#                                    resolve against the config file's directory), read-only.
#   /run/secrets/                    secret files named by `secret_file`, `redis_password_file`
#                                    or `listen.tls.key_file`, read-only.
#   environment variables            values the configuration takes with `!env NAME`.
#   /tmp                             the only place the process writes (`serve --workers N`
#                                    keeps its shared metrics directory there); give it a
#                                    tmpfs when the root filesystem is read-only.
# Other verbs run with the same entrypoint, e.g.
#   docker run --rm -v ...:ro pkjwt-gateway:0.1.0 check --config /etc/pkjwt-gateway/gateway.yaml
#
# Pin PYTHON_IMAGE by digest (python:3.11-slim-bookworm@sha256:...) for reproducible builds;
# both stages must use the same image so the compiled wheels match the runtime's ABI.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the project's wheel and a wheel of every dependency -------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
# Every dependency ships manylinux wheels for CPython 3.11 on amd64 and arm64, so no compiler
# is needed; on a platform without them, install build-essential in this stage only.
RUN pip wheel --wheel-dir /wheels .

# ---- runtime: the installed wheels, no build tools, no pip cache -----------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="pkjwt-gateway" \
      org.opencontainers.image.description="A private_key_jwt (RFC 7523) client-authentication gateway in front of a legacy OAuth identity provider" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# Unbuffered: audit lines reach the log collector as they are written, not when a buffer
# fills. No bytecode writes: the root filesystem is read-only in production.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER, and
# mounted secret files can be made readable to exactly this id.
RUN groupadd --system --gid 10001 pkjwt \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin pkjwt \
    && mkdir -p /etc/pkjwt-gateway/keys
# The wheels are bind-mounted from the build stage for this one step, so they never become
# a layer of the image. pip, setuptools and wheel go afterwards: nothing installs at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels pkjwt-gateway \
    && pip uninstall --yes pip setuptools wheel
USER 10001:10001
EXPOSE 8080 9100
# The gateway itself is PID 1 (exec form, no shell, no tini). PID 1 gets no default signal
# actions from the kernel, so a process that installs no handler would ignore SIGTERM; serve
# installs asyncio handlers for SIGTERM and SIGINT (drain, then exit 0) and SIGHUP (reload).
# With --workers N the supervisor, still PID 1, relays them to its workers and waits for each,
# so no zombie is left behind. The orchestrator's grace period must exceed
# listen.shutdown_grace (15 s by default; Docker's default of 10 s does not: use
# `docker stop -t 20` or `stop_grace_period: 20s`).
STOPSIGNAL SIGTERM
# Docker and Compose use this; Kubernetes ignores it and uses the probes in its manifests.
# Python's own urllib: the slim image has no curl or wget. Needs admin.port 9100 and an
# admin.host reachable on 127.0.0.1 (127.0.0.1 or 0.0.0.0).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["pkjwt-gateway"]
CMD ["serve", "--config", "/etc/pkjwt-gateway/gateway.yaml"]
