# V²Drop Studio: the Gradio app, CPU only. The embedded shapes model is in the image and needs no
# network; hub models are downloaded when a visitor picks one (or at build time, see PRELOAD_MODELS).
#   docker build -t v2drop-studio .
#   docker run --rm -p 7860:7860 v2drop-studio        # then open http://localhost:7860
#
# Build arguments (docker build --build-arg NAME=VALUE):
#   TORCH_INDEX     where torch comes from (default: the PyTorch CPU index, no CUDA wheels)
#   PRELOAD_MODELS  comma-separated hub ids downloaded into the image's cache at build time
#   HF_HUB_OFFLINE  1: never reach the hub at run time (only the embedded and preloaded models load); default 0
# Run-time environment (docker run -e NAME=VALUE), as for python app.py (see docs/app.md):
#   V2DROP_MODELS, V2DROP_MEMORY_BUDGET_GB (default: the container's memory limit, docker run --memory),
#   V2DROP_CPU_DTYPE, V2DROP_IMAGE_CAP, V2DROP_SESSION_TTL, V2DROP_MAX_SESSIONS, V2DROP_MAX_MODELS,
#   HF_TOKEN (gated models), HF_HUB_OFFLINE. Keep downloads across containers with a volume:
#   docker run -v v2drop-hf:/home/app/.cache/huggingface ...
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PRELOAD_MODELS=""
ARG HF_HUB_OFFLINE=0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=${HF_HUB_OFFLINE} \
    GRADIO_ANALYTICS_ENABLED=False \
    V2DROP_HOST=0.0.0.0 \
    V2DROP_PORT=7860

# CPU torch from the PyTorch CPU index first (no CUDA wheels), then the project requirements
COPY requirements.txt /tmp/requirements.txt
RUN pip install --index-url "${TORCH_INDEX}" "torch>=2.4,<3" \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# unprivileged user (uid 1000, as Hugging Face Spaces expects) owning the app and its caches
RUN useradd --create-home --uid 1000 app
ENV HOME=/home/app \
    HF_HOME=/home/app/.cache/huggingface \
    GRADIO_TEMP_DIR=/home/app/.cache/gradio \
    TMPDIR=/home/app/tmp
WORKDIR /home/app/studio
COPY --chown=app:app . .
RUN mkdir -p /home/app/tmp /home/app/.cache && chown -R app:app /home/app
USER app
# hub models to serve without downloading them at run time (their processors and configs too)
RUN if [ -n "${PRELOAD_MODELS}" ]; then HF_HUB_OFFLINE=0 python -c "import sys; from huggingface_hub import snapshot_download; [snapshot_download(m.strip(), allow_patterns=['*.json', '*.safetensors', '*.txt', '*.model', '*.jinja', '*.tiktoken']) for m in sys.argv[1].split(',') if m.strip()]" "${PRELOAD_MODELS}"; fi

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:7860/gradio_api/info', timeout=4).status == 200 else 1)"
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
