# One image for every Hatchery process: `hatchery api` (default), `hatchery worker`,
# `hatchery db upgrade`.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
# As `make`: pip fetches the pinned uv, uv installs everything else from the pins.
RUN python -m venv /opt/hatchery \
    && /opt/hatchery/bin/pip install "$(grep -m1 '^uv==' constraints.txt)" \
    && /opt/hatchery/bin/uv pip install --python /opt/hatchery/bin/python -c constraints.txt .

FROM python:3.11-slim-bookworm
# git (and ssh) for project repositories, the PostgreSQL 15 client for pg_dump/pg_restore.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client postgresql-client-15 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/hatchery hatchery \
    && mkdir -p /var/lib/hatchery/repositories /var/lib/hatchery/backups \
    && chown -R hatchery:hatchery /var/lib/hatchery
COPY --from=build /opt/hatchery /opt/hatchery
WORKDIR /app
COPY alembic.ini ./
COPY alembic ./alembic
ENV PATH=/opt/hatchery/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HATCHERY_API_HOST=0.0.0.0 \
    HATCHERY_API_PORT=8000 \
    HATCHERY_REPOSITORIES_DIR=/var/lib/hatchery/repositories \
    HATCHERY_BACKUPS_DIR=/var/lib/hatchery/backups
USER hatchery
EXPOSE 8000
ENTRYPOINT ["hatchery"]
CMD ["api"]
