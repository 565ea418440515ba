#!/bin/sh
# The stand-in's entry point (see Dockerfile): `rabbitmq-server` runs the
# node in the foreground as the rabbitmq user; anything else is run as is.
set -eu
if [ "${1:-}" = rabbitmq-server ]; then
    shift
    if [ "$(id -u)" = 0 ]; then
        # A fresh volume on /var/lib/rabbitmq may belong to root.
        chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
        exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
            /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
    fi
    exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
