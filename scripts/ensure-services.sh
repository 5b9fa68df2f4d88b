#!/usr/bin/env bash
# Make sure the services the tests use are up: start an installed-but-stopped server,
# install Debian's package if it is missing and we are root, else say what is missing.
set -euo pipefail

want="${*:-rabbitmq postgresql}"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do port_open "$port" && return 0; sleep 1; done
  echo "ensure-services: $name did not start listening on 127.0.0.1:$port" >&2
  return 1
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-services: $1 is not installed; install Debian's '$1' package (needs root)" >&2
    exit 1
  fi
  [ -n "${_APT_UPDATED:-}" ] || { apt-get update -qq; _APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

for svc in $want; do
  case "$svc" in
    rabbitmq)
      port_open 5672 && continue
      command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
      echo "ensure-services: starting RabbitMQ" >&2
      rabbitmq-server -detached || true
      wait_port 5672 RabbitMQ
      ;;
    postgresql)
      port_open 5432 && continue
      command -v pg_ctlcluster >/dev/null || apt_install postgresql
      echo "ensure-services: starting PostgreSQL" >&2
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
      wait_port 5432 PostgreSQL
      ;;
    *) echo "ensure-services: unknown service $svc" >&2; exit 1 ;;
  esac
done
