#!/usr/bin/env bash
# The tracking-server tests and scripts/tracking-stack.sh run a throwaway PostgreSQL cluster
# (initdb/pg_ctl). Install Debian's postgresql package when its binaries are missing; needs
# root (as on CI) or sudo.
set -euo pipefail
if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then exit 0; fi
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then exit 0; fi
echo "tracking stack: installing PostgreSQL (apt-get install postgresql)" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "PostgreSQL is missing and this user cannot install it: run 'apt-get install postgresql' as root" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d-less containers would start Debian's default cluster on 5432; we never use it.
$SUDO apt-get install -y -qq postgresql >/dev/null
