#!/bin/sh
# Build the .deb from a PyInstaller one-folder bundle:
#   packaging/linux/build-deb.sh BUNDLE_DIR OUT_DIR VERSION [NFPM]
# writes OUT_DIR/aifinops_VERSION_amd64.deb. nfpm reads the paths in nfpm.yaml relative to where
# it runs and expands no variables in them, so it runs in a scratch folder where bundle/ and
# repo/ point at the real folders.
set -eu

[ $# -ge 3 ] || { echo "usage: $0 BUNDLE_DIR OUT_DIR VERSION [NFPM]" >&2; exit 2; }
bundle=$(cd "$1" && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
version=$3
nfpm=${4:-nfpm}
case $nfpm in */*) nfpm=$(cd "$(dirname "$nfpm")" && pwd)/$(basename "$nfpm") ;; esac
repo=$(cd "$(dirname "$0")/../.." && pwd)

for exe in aifinops aifinops-tray; do
    [ -x "$bundle/$exe" ] || { echo "$0: $bundle/$exe is missing: build the bundle first (make bundle)" >&2; exit 1; }
done

# The newest glibc symbol version any bundled binary asks for: the package's libc6 dependency.
# (The strings sit in each ELF file's version table; grep reads them without binutils.)
glibc=$(grep -aohr 'GLIBC_2\.[0-9][0-9.]*' "$bundle" | sed 's/^GLIBC_//' | sort -uV | tail -n 1)
[ -n "$glibc" ] || { echo "$0: found no glibc symbol versions in $bundle" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
ln -s "$bundle" "$stage/bundle"
ln -s "$repo" "$stage/repo"
target="$out/aifinops_${version}_amd64.deb"
rm -f "$target"
(cd "$stage" && VERSION="$version" GLIBC_MIN="$glibc" "$nfpm" package --config repo/packaging/linux/nfpm.yaml \
    --packager deb --target "$target")
