# The chat server: one instance per container, configured by environment variables
# (every setting is in chat/settings.py; docs/deploy.md runs it on Fly.io).
#
#   docker build -t chat .
#   docker run --rm -p 8080:8080 chat
#
# The official slim image already carries ca-certificates, which librdkafka (Kafka over
# SASL_SSL) and redis-py (rediss://) use to verify the hosted services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin chat

WORKDIR /app

# Runtime dependencies only: pyproject.toml's [project] dependencies, not the `test` extra.
# Every dependency ships a manylinux wheel, so no compiler is needed.
COPY pyproject.toml README.md ./
COPY chat/ chat/
RUN pip install --no-cache-dir . && rm -rf build chat.egg-info

# `python app.py` imports the package from /app, next to templates/ and static/.
COPY app.py ./
COPY templates/ templates/
COPY static/ static/
RUN python -m compileall -q app.py chat

# The code stays owned by root: the server only reads it.
USER chat

ENV HOST=0.0.0.0 PORT=8080
EXPOSE 8080

# On SIGTERM the server closes every WebSocket with 1001, flushes Kafka and exits 0.
STOPSIGNAL SIGTERM

# There is no curl in the slim image; urlopen raises (exit 1) on anything but a 2xx.
# The server listens only once its bus has started (up to ~25 s while Kafka is unreachable).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"]

CMD ["python", "app.py"]
