#!/usr/bin/env bash
# Checks that every Go snippet in README.md compiles as pasted: each ```go
# block is written, as it is, into a package of its own in a throwaway
# module that uses this checkout's modules (replace directives), and the
# module is vetted. A block holding a test (func Test...) is placed beside
# the block that defines the handler it tests (func newHandler, the quick
# start), and run.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

awk -v dir="$work" '
	/^```go$/ { n++; inblock = 1; next }
	/^```$/ && inblock { inblock = 0; next }
	inblock { print > (dir "/block" n ".go.txt") }
' "$root/README.md"

count=0
handler=$(grep -l '^func newHandler' "$work"/block*.go.txt | head -n 1)
for f in $(ls "$work"/block*.go.txt | sort -V); do
	count=$((count + 1))
	pkg="$work/snippet$count"
	mkdir -p "$pkg"
	if grep -q '^func Test' "$f"; then
		cp "$f" "$pkg/snippet_test.go"
		cp "$handler" "$pkg/main.go"
	else
		cp "$f" "$pkg/main.go"
	fi
done
echo "readme.sh: $count Go snippets in README.md" >&2
[ "$count" -gt 0 ]

cat > "$work/go.mod" <<EOM
module readmecheck

go 1.26.0

replace (
	github.com/falwebhook/falwebhook => $root
	github.com/falwebhook/falwebhook/awslambda => $root/awslambda
	github.com/falwebhook/falwebhook/falotel => $root/falotel
	github.com/falwebhook/falwebhook/falriver => $root/falriver
	github.com/falwebhook/falwebhook/redisdedupe => $root/redisdedupe
)
EOM
cd "$work"
GOWORK=off go mod tidy
GOWORK=off go vet ./...
GOWORK=off go test -count=1 ./...
