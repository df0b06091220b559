#!/usr/bin/env bash
# Installs redis-server and redis-cli (Debian's package) when either is
# absent; does nothing otherwise.
#
#	bash .ci/install-redis.sh
set -euo pipefail

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
	echo "install-redis.sh: installing redis-server" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq redis-server >/dev/null
fi
