#!/bin/sh
# Entry point of each RabbitMQ node in deploy/cluster/compose.yaml: puts the
# cluster's shared Erlang cookie (a Compose secret, never an environment
# variable) where the node reads it, then goes on as the single-node
# deployment does (broker/rabbitmq/warren-init.sh: Warren's user from .env).
set -eu
cookie=/var/lib/rabbitmq/.erlang.cookie
tr -d '\n' < /run/secrets/rabbitmq_cookie > "$cookie"
chmod 0400 "$cookie"
if [ "$(id -u)" = 0 ]; then
    chown rabbitmq:rabbitmq "$cookie"
fi
exec /bin/sh /etc/rabbitmq/warren-init.sh
