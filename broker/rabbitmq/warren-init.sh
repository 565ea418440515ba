#!/bin/sh
# Entry point of the rabbitmq service in compose.yaml: writes Warren's user
# into a definitions file from the environment, then hands over to the
# official image's entry point.
#
# Why: a node that imports definitions at boot (rabbitmq.conf) does not
# create RABBITMQ_DEFAULT_USER, so the user has to be part of the imported
# definitions, and its password must come from the environment (.env), never
# from a committed file. The file is rewritten at every start, so changing
# the password in .env and restarting the broker changes it.
set -eu

user="${WARREN_RABBITMQ_USER:?WARREN_RABBITMQ_USER is not set (see .env.example)}"
password="${WARREN_RABBITMQ_PASSWORD:?WARREN_RABBITMQ_PASSWORD is not set (see .env.example)}"

# Only characters that need no escaping in JSON nor in the amqp:// and
# http:// URLs that compose builds from these values.
for value in "$user" "$password"; do
    case "$value" in
        *[!A-Za-z0-9._~-]*)
            echo "warren-init: WARREN_RABBITMQ_USER and WARREN_RABBITMQ_PASSWORD may only hold letters, digits and . _ ~ -" >&2
            exit 1
            ;;
    esac
done

dir=/etc/rabbitmq/definitions.d
mkdir -p "$dir"
umask 077
cat > "$dir/10-access.json" <<JSON
{
  "vhosts": [{"name": "/"}],
  "users": [{"name": "$user", "password": "$password", "tags": ["administrator"]}],
  "permissions": [{"user": "$user", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]
}
JSON
# The server runs as the rabbitmq user (the image's entry point steps down).
if [ "$(id -u)" = 0 ]; then
    chown rabbitmq:rabbitmq "$dir/10-access.json"
fi

exec docker-entrypoint.sh rabbitmq-server
