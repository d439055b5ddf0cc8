#!/usr/bin/env bash
# Build the Kuasar RPMs from this tree: makes the source tarball, switches each sandbox type on
# only when its Python project is in the tree (so the same spec builds today and picks up new
# types without edits), runs rpmbuild in a private _topdir and copies the packages to --outdir.
#
#   rpm/build.sh [--outdir DIR] [--topdir DIR] [--src DIR] [--git-head]
#                [--version V] [--release R] [--with TYPE] [--without TYPE] [--guest-dir DIR]
#                [--wasmtime-wheel FILE]
#
# --src DIR        tree to package (default: this repository), working-tree changes included
# --git-head       package the committed HEAD only (git archive), i.e. a clean checkout
# --version/--release   default: shared/pyproject.toml's version, release 1
# --with/--without TYPE  force wasm, quark, vmm or guest on or off (default: on when present)
# --guest-dir DIR  where the guest image is built and kept (rebuilt only when its inputs change)
# --wasmtime-wheel FILE  also build python3-wasmtime from this PyPI wheel (see rpm/README.md)
# Prints the built package paths, one a line, on stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
outdir=""
topdir=""
git_head=0
version=""
release=1
wasmtime_wheel=""
guest_dir=""
declare -A forced=()

die() { echo "rpm/build.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --outdir) outdir=$2; shift 2 ;;
    --topdir) topdir=$2; shift 2 ;;
    --src) src=$(cd "$2" && pwd); shift 2 ;;
    --git-head) git_head=1; shift ;;
    --version) version=$2; shift 2 ;;
    --release) release=$2; shift 2 ;;
    --with|--without)
      case "$2" in wasm|quark|vmm|guest) forced[$2]=${1#--} ;; *) die "unknown sandbox type: $2" ;; esac
      shift 2 ;;
    --guest-dir) mkdir -p "$2"; guest_dir=$(cd "$2" && pwd); shift 2 ;;
    --wasmtime-wheel) wasmtime_wheel=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

command -v rpmbuild >/dev/null || die "rpmbuild not found (apt-get install rpm / dnf install rpm-build)"
[ -x /usr/bin/python3 ] || die "/usr/bin/python3 not found"
{ /usr/bin/python3 -c 'import setuptools, wheel' && /usr/bin/python3 -m pip --version; } >/dev/null 2>&1 ||
  die "/usr/bin/python3 lacks pip, setuptools or wheel (apt-get install python3-pip python3-setuptools python3-wheel)"

if [ -z "$version" ]; then
  version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$src/shared/pyproject.toml" | head -1)
  [ -n "$version" ] || die "cannot read the version from $src/shared/pyproject.toml"
fi
topdir=${topdir:-$(mktemp -d /tmp/kuasar-rpm.XXXXXX)}
outdir=${outdir:-$topdir/out}
mkdir -p "$topdir"/{SOURCES,SPECS,BUILD,BUILDROOT,RPMS,SRPMS} "$outdir"
topdir=$(cd "$topdir" && pwd)
outdir=$(cd "$outdir" && pwd)

# the source tarball: kuasar-<version>/ with the tree's files
stage=$topdir/stage
rm -rf "$stage"
mkdir -p "$stage/kuasar-$version"
if [ "$git_head" = 1 ]; then
  git -C "$src" archive --format=tar HEAD | tar -x -C "$stage/kuasar-$version"
elif git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
  # tracked and untracked-but-not-ignored files as they are now (deleted ones left out)
  (cd "$src" && git ls-files -z --cached --others --exclude-standard |
     while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
     tar --null -T - -cf -) | tar -x -C "$stage/kuasar-$version"
else
  tar -C "$src" --exclude=.git --exclude=.venv --exclude=__pycache__ --exclude='*.egg-info' \
      --exclude=.tox --exclude=build --exclude=dist -cf - . | tar -x -C "$stage/kuasar-$version"
fi
tree=$stage/kuasar-$version
tar -C "$stage" -czf "$topdir/SOURCES/kuasar-$version.tar.gz" "kuasar-$version"
cp "$here/kuasar.spec" "$topdir/SPECS/"

# a sandbox type is built when its Python project is in the tree
declare -A folder=([wasm]=wasm-sandboxer [quark]=quark-sandboxer [vmm]=vmm-sandboxer [guest]=vmm-task)
conds=()
for t in wasm quark vmm guest; do
  want=${forced[$t]:-}
  if [ -z "$want" ]; then
    if [ -f "$tree/${folder[$t]}/pyproject.toml" ]; then want=with; else want=without; fi
  fi
  conds+=("--$want" "$t")
  echo "rpm/build.sh: $t: $want" >&2
done

# zstd, multi-threaded: the guest image makes a default gzip -9 payload take minutes
defines=(--define "_binary_payload w3T.zstdio")
[ -n "$guest_dir" ] && defines+=(--define "guest_dir $guest_dir")
nodeps=()
# BuildRequires are checked against the rpm database, which on Debian knows no system package
rpm -q --quiet rpm 2>/dev/null || nodeps=(--nodeps)

log=$topdir/rpmbuild.log
if ! rpmbuild -ba "${nodeps[@]}" "${conds[@]}" "${defines[@]}" \
      --define "_topdir $topdir" --define "kuasar_version $version" --define "kuasar_release $release" \
      "$topdir/SPECS/kuasar.spec" >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  die "rpmbuild failed; full log: $log"
fi

if [ -n "$wasmtime_wheel" ]; then
  cp "$wasmtime_wheel" "$topdir/SOURCES/"
  cp "$here/python3-wasmtime.spec" "$topdir/SPECS/"
  if ! rpmbuild -bb "${nodeps[@]}" --define "_topdir $topdir" \
        --define "wheel_name $(basename "$wasmtime_wheel")" \
        "$topdir/SPECS/python3-wasmtime.spec" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "rpmbuild of python3-wasmtime failed; full log: $log"
  fi
fi

find "$topdir/RPMS" "$topdir/SRPMS" -name '*.rpm' -exec cp {} "$outdir/" \;
find "$outdir" -name '*.rpm' | sort
