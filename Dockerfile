# syntax=docker/dockerfile:1
# The inference service as a stateless container. Build: docker build -t inference-service .
# Everything is installed by scripts/install.sh, the same script as `make install`.
FROM python:3.11-slim

# torch==2.13.0 from PyPI is the CUDA build on Linux (gigabytes of nvidia-* wheels); the CPU index
# offers 2.13.0+cpu, which satisfies the pin and sorts higher, so pip picks it. Override for GPUs:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    PROMETHEUS_MULTIPROC_DIR=/tmp/inference-metrics \
    HF_HUB_OFFLINE=1

WORKDIR /app

# Layer 1, cached until pyproject.toml, constraints.txt or install.sh change: torch and every
# pinned dependency. With no source copied yet the project itself installs as an empty shell.
COPY pyproject.toml constraints.txt ./
COPY scripts/install.sh scripts/install.sh
RUN PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL" scripts/install.sh /opt/venv

# Layer 2: the sources. install.sh's stamp only hashes pyproject/constraints/itself, so drop it to
# make the script install the real package now (dependencies are already there: seconds).
COPY service ./service
COPY models ./models
COPY config ./config
RUN rm -f /opt/venv/.install-stamp \
    && PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL" scripts/install.sh /opt/venv \
    && useradd --system --create-home --uid 10001 --shell /usr/sbin/nologin app

# Non-root; the code and the venv stay owned by root, so the service cannot modify itself.
USER app

EXPOSE 8000

# The service handles SIGTERM by draining in-flight requests (shutdown_grace, 25 s by default);
# docker-compose gives it stop_grace_period: 40s before SIGKILL.
STOPSIGNAL SIGTERM

# No curl in -slim: ask /health/ready with the standard library (non-2xx raises, exit 1).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)"]

CMD ["python", "-m", "service", "serve", "--config", "config/default.yaml", "--host", "0.0.0.0", "--port", "8000"]
