#!/usr/bin/env bash
# Install one Debian package that the tests or scripts need: apt-install.sh PACKAGE PURPOSE.
# Needs root (as on CI) or sudo; says what to run otherwise.
set -euo pipefail
package=$1 purpose=$2
echo "installing Debian's $package for $purpose (apt-get)" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "$package is missing and this user cannot install it: run 'apt-get install $package' as root" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "$package" >/dev/null
