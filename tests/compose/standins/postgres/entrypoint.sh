#!/bin/sh
# Minimal docker-entrypoint.sh of the official image: POSTGRES_USER/PASSWORD/DB on first start.
set -e
PGBIN=/usr/lib/postgresql/15/bin
export PGDATA=${PGDATA:-/var/lib/postgresql/data}
mkdir -p "$PGDATA" /run/postgresql && chown -R postgres:postgres "$PGDATA" /run/postgresql && chmod 700 "$PGDATA"
run() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s' "${POSTGRES_PASSWORD}" > /tmp/pwfile; chown postgres /tmp/pwfile
  run $PGBIN/initdb -D "$PGDATA" -E UTF8 --locale=C.UTF-8 -U "${POSTGRES_USER:-postgres}" --pwfile=/tmp/pwfile --auth-host=scram-sha-256 --auth-local=trust
  rm -f /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  run $PGBIN/pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
  if [ -n "$POSTGRES_DB" ] && [ "$POSTGRES_DB" != postgres ]; then
    run $PGBIN/createdb -U "${POSTGRES_USER:-postgres}" "$POSTGRES_DB"; fi
  run $PGBIN/pg_ctl -D "$PGDATA" -m fast -w stop
fi
[ "$1" = postgres ] && { shift; exec setpriv --reuid=postgres --regid=postgres --init-groups $PGBIN/postgres -c listen_addresses='*' "$@"; }
exec "$@"
