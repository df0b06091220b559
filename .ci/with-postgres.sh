#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL cluster: initdb and pg_ctl as
# the postgres user, data and socket in a fresh temporary directory, TCP on
# 127.0.0.1 at a free port, trust authentication, removed on exit. The
# command sees
#
#	FALWEBHOOK_POSTGRES_URL      postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable
#	FALWEBHOOK_POSTGRES_RESTART  a command that restarts the cluster (fault tests)
#
#	bash .ci/with-postgres.sh go test ./...
set -euo pipefail

bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
dir="$(mktemp -d /tmp/falwebhook-pg.XXXXXX)"
chown postgres "$dir"
as_pg() { (cd "$dir" && runuser -u postgres -- "$@"); }

stop() {
	as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap stop EXIT

as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 >/dev/null
# A random port; another one if it is taken.
for try in 1 2 3 4 5 6 7 8 9 10; do
	port=$((20000 + RANDOM % 40000))
	ctl="$bin/pg_ctl -D $dir/data -l $dir/log -w -t 60 -o '-k $dir -p $port -c listen_addresses=127.0.0.1'"
	if as_pg sh -c "$ctl start" >/dev/null; then
		break
	fi
	[ "$try" = 10 ] && { cat "$dir/log" >&2; exit 1; }
done

restart="$dir/restart"
cat >"$restart" <<SCRIPT
#!/bin/sh
# Restarts the throwaway cluster at once, as a crash would (immediate stop).
cd "$dir" && runuser -u postgres -- sh -c "$ctl -m immediate restart" >/dev/null
SCRIPT
chmod +x "$restart"

export FALWEBHOOK_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
export FALWEBHOOK_POSTGRES_RESTART="$restart"
echo "with-postgres.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
"$@"
