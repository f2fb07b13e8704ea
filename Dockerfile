# One image for all four connectors: `docker run labconnect run sink-billing`.
# Configuration is by environment variables only (see README).

FROM python:3.11.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY common ./common
COPY connectors ./connectors
# Reproducible: every dependency at the version and hash in requirements.lock (scripts/lock
# regenerates it), then the project without resolving anything again.
RUN python -m venv /opt/labconnect \
 && /opt/labconnect/bin/pip install --upgrade pip \
 && /opt/labconnect/bin/pip install --require-hashes -r requirements.lock \
 && /opt/labconnect/bin/pip install --no-deps . \
 && find /opt/labconnect -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11.11-slim
# Only the virtualenv and the schemas: no compilers, no pip cache, no sources.
COPY --from=build /opt/labconnect /opt/labconnect
COPY schemas /opt/labconnect/schemas
RUN useradd --system --uid 10001 --home-dir /var/lib/labconnect --create-home labconnect
ENV PATH=/opt/labconnect/bin:$PATH \
    LABCONNECT_SCHEMAS_DIR=/opt/labconnect/schemas \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    STATUS_PORT=8083
USER labconnect
WORKDIR /var/lib/labconnect
EXPOSE 8083
# Shell form, so that it follows STATUS_PORT. The status server listens on STATUS_BIND, 127.0.0.1 by
# default (this check runs inside the container); set STATUS_BIND=0.0.0.0 for probes and scrapes
# from outside, and ADMIN_TOKEN(_FILE) to allow pause/resume/stop/restart.
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://127.0.0.1:${STATUS_PORT:-8083}/health" > /dev/null 2>&1 || exit 1
ENTRYPOINT ["labconnect"]
CMD ["run", "source-lis"]
