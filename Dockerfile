# tapcore lab app on a GPU box (scripts/container_smoke.sh builds and checks exactly this):
#   docker build -t tapcore .
#   docker run -d --name tapcore --gpus all -p 8501:8501 -v tapcore-workspace:/workspace tapcore
# then open http://localhost:8501. Everything the app keeps (datasets, jobs, models) lives in the
# /workspace volume. Without --gpus the same image runs on the CPU.
#
# Build arguments:
#   BASE          the Python 3.11 base image (default: the official python:3.11-slim). Any Debian-like
#                 image with python3 and its venv module works, e.g. one made from Debian packages by
#                 scripts/container_base.sh where Docker Hub cannot be reached.
#   TAPCORE_UID   uid of the unprivileged user the app runs as (default 1000)
#   TAPCORE_GID   gid of the lab's group (default 1000): everything in /workspace gets this group and is
#                 readable and writable by it (setgid /workspace + TAPCORE_UMASK=0002)
# Secret (optional): pip_cert, a CA bundle for pip when a TLS-intercepting proxy sits between the
#   build and PyPI (`--secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt`); used only while
#   installing, never stored in the image.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TAPCORE_HOME=/workspace \
    TAPCORE_WORKER_DEVICE=auto \
    TAPCORE_UMASK=0002 \
    THP_MEM_ALLOC_ENABLE=1 \
    STREAMLIT_SERVER_MAX_UPLOAD_SIZE=2048 \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

# curl for the health check; glib/gomp for opencv-headless' and torch's shared libraries
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# One virtual environment, one torch: the PyPI wheel of the pinned torch carries CUDA (its nvidia-*
# dependencies bundle the CUDA runtime; the host needs only the NVIDIA driver and container toolkit).
# The test-only pins (pytest, playwright) stay out of the image.
RUN python3 -m venv /opt/venv
WORKDIR /app
COPY requirements.txt .
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && grep -vE '^(pytest|pytest-timeout|playwright)==' requirements.txt > /tmp/requirements-image.txt \
    && pip install -r /tmp/requirements-image.txt \
    && rm /tmp/requirements-image.txt

# Editable install: the package runs from /app, beside the shipped models/ folder (the venv's own
# setuptools builds it, so this step needs no network).
COPY pyproject.toml README.md ./
COPY tapcore ./tapcore
RUN pip install --no-deps --no-build-isolation -e .

COPY app.py ./
COPY pages ./pages
COPY models ./models
COPY .streamlit ./.streamlit

# Run as an unprivileged user in the lab's group; the workspace volume is the only writable place it
# needs. /workspace is setgid (2775), so everything created in it belongs to the lab's group, and the
# entry points (app, CLI, workers) apply TAPCORE_UMASK=0002, so the group can read and write it.
ARG TAPCORE_UID=1000
ARG TAPCORE_GID=1000
RUN (getent group "$TAPCORE_GID" >/dev/null || groupadd --gid "$TAPCORE_GID" tapcore) \
    && useradd --create-home --uid "$TAPCORE_UID" --gid "$TAPCORE_GID" tapcore \
    && mkdir -p /workspace \
    && chown "$TAPCORE_UID:$TAPCORE_GID" /workspace \
    && chmod 2775 /workspace
USER tapcore
VOLUME ["/workspace"]

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS http://localhost:8501/_stcore/health || exit 1

# The app starts a local job worker on the GPU (or CPU) by itself. On a box with several GPUs,
# run extra workers in the same container: docker exec -d <name> tapcore worker --device cuda:1
CMD ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0"]
