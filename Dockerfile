# The image of every im-cluster process: the `im` command, one service per container
# (`im rest`, `im transfer`, `im connector`, `im offline-writer`, `im migrate`), configured only by
# IM_* environment variables (README "Configuration"). docker-compose.yml runs the cluster from it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
# Dependencies first, read from pyproject.toml alone, so that this layer (most of the build time)
# is rebuilt only when they change, not on every code change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# .dockerignore keeps the context to what `pip install .` needs
COPY . .
RUN pip install . \
 && cd / && rm -rf /src

RUN useradd --create-home --home-dir /home/im --uid 10001 --user-group im \
 && install -d -o im -g im /home/im/files
USER im
# `im up` keeps SQLite and its secret in ./im-data: the user's own home
WORKDIR /home/im
# inside a container only 0.0.0.0 can be reached through published ports
ENV IM_BIND_HOST=0.0.0.0

# 8082 REST (HTTP), 9081 connector (clients, TCP), 9082 transfer (connectors, TCP)
EXPOSE 8082 9081 9082
ENTRYPOINT ["im"]
CMD ["up"]
