# The tidegate image: every stage and the topics job run from it (see docker-compose.yml).
#
#   docker build -t tidegate .
#   docker run --rm tidegate                     # tidegate --help
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=broker:9092 tidegate tidegate topics create

# Build stage: install tidegate and its dependencies into a virtual environment, so the runtime
# image carries neither the source tree nor pip's build leftovers.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/tidegate

WORKDIR /src
COPY . .
# Pin the dependencies to the tested lock file when the checkout has one.
RUN set -eu; \
    if [ -f requirements.lock ]; then set -- -c requirements.lock; else set --; fi; \
    /opt/tidegate/bin/pip install "$@" .

# Runtime stage.
FROM python:3.11-slim

ENV PATH=/opt/tidegate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TIDEGATE_DATA_DIR=/data

COPY --from=build /opt/tidegate /opt/tidegate

# A non-root user owning the data directory. /data/models exists in the image so that a fresh
# named volume mounted there (the model registry) starts out owned by this user, not by root.
RUN set -eu; \
    groupadd --system --gid 10001 tidegate; \
    useradd --system --uid 10001 --gid tidegate --create-home --home-dir /home/tidegate \
        --shell /usr/sbin/nologin tidegate; \
    mkdir -p /data/models; \
    chown -R tidegate:tidegate /data

USER tidegate
WORKDIR /data

# The monitoring stage's status page (TIDEGATE_STATUS_PORT).
EXPOSE 8080

# No ENTRYPOINT: each service names its full command (tidegate stage run <name>, ...).
CMD ["tidegate", "--help"]
