#!/usr/bin/env bash
# Installs the Debian packages that the tests need, when they are missing. Idempotent: a package whose command
# is already on PATH is left alone, and apt is not touched at all when nothing is missing.
#
#   scripts/install-system-packages.sh          (root, or a user with sudo)
#
# To add a package, add one "command:package" line to PACKAGES: the command proves it is installed.
set -euo pipefail

PACKAGES=(
  # `docker-compose config` validates docker-compose.yaml without a Docker engine (tests/test_compose.py).
  # Debian bookworm's package is Compose 1.29.2, which reads the Compose Specification (profiles,
  # deploy.resources.reservations.devices, depends_on conditions) that the file uses.
  "docker-compose:docker-compose"
  # Azurite (npm package, tests/azurite) is the Azure Blob emulator of the tests; Debian's nodejs (18) runs it.
  "node:nodejs"
  "npm:npm"
)

missing=()
for entry in "${PACKAGES[@]}"; do
  cmd="${entry%%:*}"
  pkg="${entry#*:}"
  if command -v "$cmd" >/dev/null 2>&1; then
    echo "install-system-packages: $pkg already installed ($(command -v "$cmd"))"
  else
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-system-packages: nothing to install"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-system-packages: need root to install: ${missing[*]}" >&2
  echo "  run this script as root, or install them yourself: apt-get install ${missing[*]}" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-packages: no apt-get here (not Debian/Ubuntu); install by hand: ${missing[*]}" >&2
  exit 1
fi

echo "install-system-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
echo "install-system-packages: done"
