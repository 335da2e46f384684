# KSM Lab dashboard (simulator + web UI). Build and run:
#   npm ci --prefix static            # htmx for the pages (static/node_modules, copied below)
#   docker build -t ksmlab .
#   docker run --rm -p 8000:8000 ksmlab        # then open http://127.0.0.1:8000/
# Settings come from KSMLAB_* environment variables (app/config.py), e.g. -e KSMLAB_MAX_SESSIONS=8.
# The kernel replayer (root, /sys/kernel/mm/ksm) is not reachable from this image's server.

FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv

COPY --from=ghcr.io/astral-sh/uv:0.5 /uv /uvx /usr/local/bin/

WORKDIR /app

# 1. locked dependencies only: this layer is reused until pyproject.toml or uv.lock change
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-project

# 2. the source, then the project itself
COPY pyproject.toml uv.lock README.md ./
COPY sim ./sim
COPY app ./app
COPY templates ./templates
COPY static ./static
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev

RUN useradd --create-home --uid 10001 ksmlab
USER ksmlab

ENV PATH="/app/.venv/bin:$PATH"
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"

CMD ["ksmlab", "serve", "--host", "0.0.0.0", "--port", "8000"]
