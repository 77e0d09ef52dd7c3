#!/bin/sh
# Make sure PostgreSQL and Redis answer for the test run; start local ones if they are installed but down.
set -u
db_url=${TEST_DATABASE_URL:-postgres://postgres@localhost:5432/hookline}
redis_url=${TEST_REDIS_URL:-redis://localhost:6379/15}

hostport() { # URL -> "host port"
  echo "$1" | sed -E 's#^[a-z0-9+]+://([^@/]*@)?([^:/]+)(:([0-9]+))?.*#\2 \4#'
}
answers() { # host port
  python3 -c "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()" "$1" "$2" 2>/dev/null
}

set -- $(hostport "$db_url"); pg_host=$1; pg_port=${2:-5432}
set -- $(hostport "$redis_url"); redis_host=$1; redis_port=${2:-6379}

if ! answers "$pg_host" "$pg_port"; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "PostgreSQL is not answering on $pg_host:$pg_port; starting the local cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    sleep 2
  fi
  if ! answers "$pg_host" "$pg_port"; then
    echo "PostgreSQL is needed on $pg_host:$pg_port. Install it (apt-get install postgresql, or"
    echo "'docker compose up -d db' on a machine with Docker) or set DATABASE_URL to a reachable server." >&2
    exit 1
  fi
fi

if ! answers "$redis_host" "$redis_port"; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "Redis is not answering on $redis_host:$redis_port; starting a local redis-server"
    mkdir -p /tmp/hookline-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
      --dir /tmp/hookline-redis --logfile /tmp/hookline-redis/redis.log || true
    sleep 1
  fi
  if ! answers "$redis_host" "$redis_port"; then
    echo "Redis is needed on $redis_host:$redis_port. Install it (apt-get install redis-server, or"
    echo "'docker compose up -d redis') or set REDIS_URL to a reachable server." >&2
    exit 1
  fi
fi
echo "PostgreSQL ($pg_host:$pg_port) and Redis ($redis_host:$redis_port) are up."
