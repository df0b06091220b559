#!/usr/bin/env bash
# Runs the redisdedupe module's tests against a real Redis.
#
# Installs redis-server when it is absent (.ci/install-redis.sh), starts one on
# 127.0.0.1 on a free port without persistence, waits for PONG, exports
# FALWEBHOOK_REDIS_ADDR, runs `go test -race ./...` in redisdedupe/ and
# stops the server, whatever the outcome. Arguments are passed on to go test.
# Run it from the repository root; under CI=true the tests fail, rather than
# skip, when Redis is unreachable.
#
#	CI=true bash .ci/redis.sh
#	bash .ci/redis.sh -count=3 -run TestLostReplies
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash .ci/install-redis.sh

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null || true)
if [ -z "$port" ]; then
	# No python3: pick a port that nothing answers on.
	for p in $(seq 20000 20999 | shuf); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			port=$p
			break
		fi
	done
fi

workdir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
	--dir "$workdir" --logfile "$workdir/redis.log" &
pid=$!
cleanup() {
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	rm -rf "$workdir"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
	if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
		break
	fi
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "redis.sh: redis-server exited:" >&2
		cat "$workdir/redis.log" >&2 || true
		exit 1
	fi
	sleep 0.1
done
if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" != PONG ]; then
	echo "redis.sh: redis-server on port $port did not answer PING within 10 s" >&2
	cat "$workdir/redis.log" >&2 || true
	exit 1
fi
echo "redis.sh: redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$port" >&2

export FALWEBHOOK_REDIS_ADDR="127.0.0.1:$port"
(cd redisdedupe && go test -race -count=1 "$@" ./...)
