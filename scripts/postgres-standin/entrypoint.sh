#!/bin/sh
# Make the cluster on first start (user, password and database from the environment, as
# the official image does), then run PostgreSQL in the foreground.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}
bin=$(echo /usr/lib/postgresql/*/bin)
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password_file=$(mktemp)
    printf '%s' "$POSTGRES_PASSWORD" > "$password_file"
    "$bin/initdb" -D "$PGDATA" -U "$user" --pwfile="$password_file" \
        --auth-local=trust --auth-host=scram-sha-256 --locale=C --encoding=UTF8
    rm "$password_file"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$database" != postgres ]; then
        echo "CREATE DATABASE \"$database\" OWNER \"$user\";" |
            "$bin/postgres" --single -D "$PGDATA" -c unix_socket_directories=/tmp postgres
    fi
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
