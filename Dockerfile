# The image a docker or kubernetes work pool runs a `dvcflow deploy --pool NAME` deployment in
# (docs/remote.md): Python, git, dvcflow and its locked dependencies (requirements.lock). The job clones the
# pipeline's repository itself (the deployment's pull step), so no project code is baked in.
#
#   docker build -t dvcflow:0.1.0 .          # the default of `deploy --image`: dvcflow:<version>
#   docker build -t registry.example.com/team/dvcflow:0.1.0 . && docker push ...
#
# A DVC remote on S3, GCS or Azure needs DVC's plug-in for it: add `RUN uv pip install --system dvc-s3`
# (or dvc-gs, dvc-azure) in an image FROM this one.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install --yes --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dvcflow
COPY requirements.lock pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir uv==0.13.9 \
    && uv pip install --system --no-cache --requirement requirements.lock \
    && uv pip install --system --no-cache --no-deps . \
    && python -m compileall -q "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"

# Stage commands say `python`; DVC and Prefect stay quiet about analytics; logs arrive as they are printed.
ENV DVC_NO_ANALYTICS=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PYTHONUNBUFFERED=1 \
    GIT_TERMINAL_PROMPT=0

# The job's own folder; clones and DVC's cache go to ~/.cache/dvcflow/clones (DVCFLOW_CLONES to move them,
# e.g. onto a volume that outlives the job).
WORKDIR /work
