# tapcore lab app on a GPU box:
#   docker build -t tapcore .
#   docker run --gpus all -p 8501:8501 -v tapcore-workspace:/workspace tapcore
# then open http://localhost:8501. Everything the app keeps (datasets, jobs, models) lives in the
# /workspace volume. Without --gpus the same image runs on the CPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TAPCORE_HOME=/workspace \
    TAPCORE_WORKER_DEVICE=auto \
    THP_MEM_ALLOC_ENABLE=1 \
    STREAMLIT_SERVER_MAX_UPLOAD_SIZE=2048 \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

# curl for the health check; libgl/glib for opencv-headless' shared libraries
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# CUDA-enabled torch first (wheels bundle the CUDA runtime; the host needs only the NVIDIA driver
# and the NVIDIA container toolkit), then the rest of the pinned requirements.
# TORCH_CUDA picks the CUDA build of the torch wheels (see https://pytorch.org/get-started/locally/).
ARG TORCH_CUDA=cu128
COPY requirements.txt .
RUN pip install --index-url https://download.pytorch.org/whl/${TORCH_CUDA} \
        "torch==$(grep -E '^torch==' requirements.txt | cut -d= -f3)" \
        "torchvision==$(grep -E '^torchvision==' requirements.txt | cut -d= -f3)" \
    && grep -vE '^(torch|torchvision)==' requirements.txt > /tmp/requirements-rest.txt \
    && pip install -r /tmp/requirements-rest.txt

# Editable install: the package runs from /app, beside the shipped models/ folder.
COPY pyproject.toml README.md ./
COPY tapcore ./tapcore
RUN pip install --no-deps -e .

COPY app.py ./
COPY pages ./pages
COPY models ./models
COPY .streamlit ./.streamlit

# Run as an unprivileged user; the workspace volume is the only writable place it needs.
RUN useradd --create-home --uid 1000 tapcore \
    && mkdir -p /workspace \
    && chown tapcore:tapcore /workspace
USER tapcore
VOLUME ["/workspace"]

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS http://localhost:8501/_stcore/health || exit 1

# The app starts a local job worker on the GPU (or CPU) by itself. On a box with several GPUs,
# run extra workers in the same container: docker exec <name> tapcore worker --device cuda:1
CMD ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0"]
