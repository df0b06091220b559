#!/usr/bin/env bash
# Release rehearsal. Publishes every module of the tree at the version the
# modules require of one another (the version about to be tagged) through a
# file-system GOPROXY (go run ./internal/release stage), then, as a user
# outside the repository with no workspace and an empty module cache:
#   - go install …/cmd/…@VERSION for every command of every module, and runs
#     `falwebhook demo`;
#   - in a fresh module, go gets every module at VERSION and builds and vets
#     a program importing each of their importable packages;
#   - runs gorelease (golang.org/x/exp/cmd/gorelease) on each module, in a
#     copy of the tree whose go.sum files hold the sums of the staged
#     modules, against the previous release's tag when there is one.
# Dependencies come from the module cache when it has them, from the module
# proxy otherwise. Run it from anywhere in the repository:
#
#	bash .ci/rehearse.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

work=$(mktemp -d)
cleanup() {
	chmod -R u+w "$work" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

say() { printf 'rehearse.sh: %s\n' "$*" >&2; }

# The tree's own tools run in the workspace.
version=$(GOWORK= go run ./internal/release check)
mapfile -t dirs < <(GOWORK= go run ./internal/release modules -released)
mapfile -t paths < <(GOWORK= go run ./internal/release modules -released -paths)
GOWORK= go run ./internal/release stage "$work/stage"
say "publishing ${#paths[@]} modules at $version through file://$work/stage/proxy"

cache=$(go env GOMODCACHE)
export GOWORK=off
export GOPROXY="file://$work/stage/proxy,file://$cache/cache/download,$(go env GOPROXY)"
# The staged modules are in no checksum database yet; every other module is
# checked against it as usual.
export GONOSUMDB="${paths[0]}${GONOSUMDB:+,$GONOSUMDB}"
export GOMODCACHE="$work/modcache"
export GOBIN="$work/bin"
# -trimpath: builds do not depend on where the module cache is, so this
# empty one still reuses the build cache.
export GOFLAGS="-trimpath"
export PATH="$GOBIN:$PATH"

# A consumer: every module at the version, every importable package.
mkdir "$work/consumer"
cd "$work/consumer"
go mod init rehearsal.invalid/consumer >/dev/null 2>&1
for p in "${paths[@]}"; do
	go get "$p@$version" >/dev/null 2>&1 || { go get "$p@$version"; exit 1; }
done
libs=() cmds=()
for p in "${paths[@]}"; do
	while read -r pkg name; do
		case "$pkg" in
		*/internal/* | */internal) ;;
		*) if [ "$name" = main ]; then cmds+=("$pkg"); else libs+=("$pkg"); fi ;;
		esac
	done < <(go list -e -f '{{.ImportPath}} {{.Name}}' "$p/..." 2>/dev/null)
done
# Every package is listed once per module prefix it falls under; keep one.
mapfile -t libs < <(printf '%s\n' "${libs[@]}" | sort -u)
mapfile -t cmds < <(printf '%s\n' "${cmds[@]}" | sort -u)
{
	echo 'package main'
	echo
	echo 'import ('
	for l in "${libs[@]}"; do echo "	_ \"$l\""; done
	echo ')'
	echo
	echo 'func main() {}'
} >main.go
go mod tidy >/dev/null 2>&1 || { go mod tidy; exit 1; }
go build -o /dev/null .
go vet .
say "a fresh module requiring $(grep -c "^	${paths[0]}" go.mod) library modules at $version builds and vets a program importing their ${#libs[@]} packages"

# The commands, as a user installs them.
cd "$work"
for c in "${cmds[@]}"; do
	go install "$c@$version"
done
say "go install …@$version: ${cmds[*]}"
falwebhook demo >"$work/demo.out"
say "falwebhook demo: $(wc -l <"$work/demo.out") lines of output"

# API compatibility and release checks. gorelease wants a clean git
# repository: a copy of the tree (tracked and untracked files, as staged),
# with the staged sums in each go.sum, committed.
gorelease=golang.org/x/exp/cmd/gorelease@v0.0.0-20261113113407-e3970619a1a4
if ! go install "$gorelease" >"$work/gorelease-install.log" 2>&1; then
	cat "$work/gorelease-install.log" >&2
	say "gorelease does not install here; API compatibility not checked"
	exit 1
fi
copy="$work/repo"
mkdir "$copy"
(cd "$root" && git ls-files -co --exclude-standard -z | tar -cf - --null -T -) | (cd "$copy" && tar -xf -)
for d in "${dirs[@]}"; do
	cp "$work/stage/mod/$d/go.sum" "$copy/$d/go.sum"
done
(cd "$copy" && git init -q && git add -A && git -c user.name=rehearsal -c user.email=rehearsal@rehearsal.invalid commit -qm rehearsal)
# The previous release: the highest vX.Y.Z tag below the version.
prev=$( (git -C "$root" tag -l 'v*' | grep -E '^v[0-9]+\.[0-9]+\.[0-9]+$' || true; echo "$version") | sort -uV | awk -v v="$version" '$0 == v { print p; exit } { p = $0 }')
for d in "${dirs[@]}"; do
	base=none
	if [ -n "$prev" ]; then
		tag="$prev"
		[ "$d" = . ] || tag="$d/$prev"
		if git -C "$root" rev-parse -q --verify "refs/tags/$tag" >/dev/null; then
			base=$prev
		fi
	fi
	if ! (cd "$copy/$d" && gorelease -base="$base" -version="$version") >"$work/gorelease.out" 2>&1; then
		cat "$work/gorelease.out" >&2
		say "gorelease: $d at $version (base $base) is not releasable"
		exit 1
	fi
	say "gorelease: $d: $(tail -n 1 "$work/gorelease.out") (base $base)"
done
say "ok: $version"
