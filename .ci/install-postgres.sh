#!/usr/bin/env bash
# Installs the PostgreSQL server (Debian's package) when initdb is absent;
# does nothing otherwise. Debian's package starts no cluster that the tests
# use: .ci/with-postgres.sh makes a throwaway one.
#
#	bash .ci/install-postgres.sh
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
	echo "install-postgres.sh: installing postgresql" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq postgresql >/dev/null
fi
