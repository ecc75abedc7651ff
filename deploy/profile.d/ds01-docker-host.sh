# Installed as /etc/profile.d/ds01-docker-host.sh: every login shell talks to Docker through
# the DS01 gateway, as the user who opened the connection. A user may still set DOCKER_HOST
# or a docker context of their own; only the gateway's socket leads anywhere.
if [ -z "${DOCKER_HOST:-}" ] && [ -z "${DOCKER_CONTEXT:-}" ]; then
    DOCKER_HOST=unix:///run/ds01/docker.sock
    export DOCKER_HOST
fi
# A GPU create may wait in the allocator's queue (gpu_wait, 3 minutes by default) inside the
# create call; docker-compose 1.x gives up on an HTTP call after 60 s unless told otherwise.
if [ -z "${COMPOSE_HTTP_TIMEOUT:-}" ]; then
    COMPOSE_HTTP_TIMEOUT=300
    export COMPOSE_HTTP_TIMEOUT
fi
