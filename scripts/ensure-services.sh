#!/usr/bin/env bash
# Make sure the services the tests use are up: start an installed-but-stopped server,
# install Debian's package if it is missing and we are root, else say what is missing.
# "promtool" is a tool, not a server: it is installed if missing, and nothing is started.
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

# Install a Debian package without letting it start a service. Debian ships promtool
# only in its 'prometheus' package, and nginx's package starts a server on port 80; their
# maintainer scripts start services through invoke-rc.d (or deb-systemd-invoke under
# systemd). While they install, /usr/sbin/policy-rc.d exits 101 ("action forbidden"): both
# helpers then skip the start, so the install neither fails where there is no systemd nor
# leaves a server running. The machine's own policy-rc.d, if any, is put back afterwards,
# and the unit is disabled so that no server comes up at the next boot either.
install_quietly() {  # PACKAGE
  local package=$1
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-services: install Debian's '$package' package (needs root)" >&2
    exit 1
  fi
  local policy=/usr/sbin/policy-rc.d
  local saved=$policy.ensure-services-saved
  [ -e "$policy" ] && mv -f "$policy" "$saved"
  # shellcheck disable=SC2317  # called through the trap
  restore_policy() {
    rm -f "$policy"
    if [ -e "$saved" ]; then mv -f "$saved" "$policy"; fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\n# ensure-services.sh: start no service while %s installs.\nexit 101\n' \
    "$package" >"$policy"
  chmod 0755 "$policy"
  echo "ensure-services: installing Debian's $package package" >&2
  [ -n "${_APT_UPDATED:-}" ] || { apt-get update -qq; _APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" \
    >/dev/null
  restore_policy
  trap - EXIT
  deb-systemd-helper disable "$package.service" >/dev/null 2>&1 || true
  update-rc.d "$package" disable >/dev/null 2>&1 || true
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
    promtool)
      command -v promtool >/dev/null && continue
      install_quietly prometheus
      command -v promtool >/dev/null || {
        echo "ensure-services: the prometheus package installed no promtool on PATH" >&2
        exit 1
      }
      ;;
    wrk | nginx)
      # Tools for `make bench`; nginx is only run by the bench, on a port of its own.
      command -v "$svc" >/dev/null || [ -x "/usr/sbin/$svc" ] && continue
      install_quietly "$svc"
      ;;
    *) echo "ensure-services: unknown service $svc" >&2; exit 1 ;;
  esac
done
