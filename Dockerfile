# One image for both asyncgate processes.
#   gateway (default):  docker run IMAGE
#   consumer:           docker run -e ASYNCGATE_HEALTH_URL=http://127.0.0.1:9181/healthz \
#                                  IMAGE asyncgate-consumer
# Build from another (e.g. local) base: docker build --build-arg BASE_IMAGE=my/python:3.11 .
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY asyncgate ./asyncgate
COPY gateway ./gateway
COPY consumer ./consumer
# The same venv path as the systemd units use.
RUN python3 -m venv /opt/asyncgate/.venv \
    && /opt/asyncgate/.venv/bin/pip install --no-cache-dir /src

FROM ${BASE_IMAGE}
# A system user with a fixed uid (for volume ownership and runAsNonRoot). Both CLIs
# default to --config config/routes.yaml relative to the working directory: the link
# makes that /etc/asyncgate/routes.yaml, so `IMAGE asyncgate-consumer ...` (and its
# operator commands) need no --config.
RUN groupadd --gid 10001 asyncgate \
    && useradd --uid 10001 --gid asyncgate --no-create-home \
        --home-dir /var/lib/asyncgate --shell /usr/sbin/nologin asyncgate \
    && mkdir -p /var/lib/asyncgate /opt/asyncgate \
    && chown asyncgate:asyncgate /var/lib/asyncgate \
    && ln -s /etc/asyncgate /opt/asyncgate/config
COPY --from=build /opt/asyncgate/.venv /opt/asyncgate/.venv
COPY config/routes.yaml /etc/asyncgate/routes.yaml
WORKDIR /opt/asyncgate

# The store is shared by the gateway and the consumer: mount one volume at
# /var/lib/asyncgate in both containers (SQLite), or set ASYNCGATE_STORE to PostgreSQL.
# ASYNCGATE_UPSTREAM and ASYNCGATE_BROKER have no useful default inside a container.
ENV PATH=/opt/asyncgate/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ASYNCGATE_LISTEN=0.0.0.0:8080 \
    ASYNCGATE_ADMIN_LISTEN=0.0.0.0:9180 \
    ASYNCGATE_CONSUMER_ADMIN_LISTEN=0.0.0.0:9181 \
    ASYNCGATE_STORE=sqlite:////var/lib/asyncgate/asyncgate.db \
    ASYNCGATE_HEALTH_URL=http://127.0.0.1:9180/healthz

USER 10001:10001
# 8080 public (gateway), 9180 gateway admin, 9181 consumer admin.
EXPOSE 8080 9180 9181

# /healthz on the admin port, with urllib: the slim base has no curl. The consumer's
# admin port is 9181: run it with -e ASYNCGATE_HEALTH_URL=http://127.0.0.1:9181/healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/asyncgate/.venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('ASYNCGATE_HEALTH_URL', 'http://127.0.0.1:9180/healthz'), timeout=4)"]

# SIGTERM starts a graceful shutdown of up to 30 s: use `docker stop -t 45` (or
# --stop-timeout 45 on run), since Docker's default 10 s would cut it short.
STOPSIGNAL SIGTERM
CMD ["asyncgate-gateway", "--config", "/etc/asyncgate/routes.yaml"]
