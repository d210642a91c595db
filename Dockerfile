# V²Drop Studio: the Gradio app on the embedded shapes model, CPU only, no network needed at run time.
#   docker build -t v2drop-studio .
#   docker run --rm -p 7860:7860 v2drop-studio        # then open http://localhost:7860
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    V2DROP_HOST=0.0.0.0 \
    V2DROP_PORT=7860

# CPU torch from the PyTorch CPU index first (no CUDA wheels), then the project requirements
COPY requirements.txt /tmp/requirements.txt
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<3" \
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

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:7860/gradio_api/info', timeout=4).status == 200 else 1)"
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
