#!/bin/bash
# vmscope lab build: the lab guest's kernel (Linux 7.3 from Debian trixie-backports' linux-source-7.3, or 6.12
# from trixie's linux-source-6.12; tinyconfig plus kvm-lab.config plus kvm-lab-VERSION.config when there is one)
# and its initramfs (busybox and init), made once and cached by their inputs.
#
# Run by `vmscope lab build`, which sets:
#   LAB_ROOT   the cache root (~/.cache/vmscope/lab or $VMSCOPE_LAB_DIR): the kernel lives in
#              LAB_ROOT/kernel-KEY, KEY = sha256 of the source package's version and the config fragments, the
#              initramfs in LAB_ROOT/initrd-KEY, KEY = sha256 of init and busybox (keyed by inputs, not outputs:
#              a bzImage is not bit-reproducible)
#   LAB_INPUTS the folder holding kvm-lab.config and init
#   LAB_KERNEL 7.3 (the default) or 6.12
#   JOBS       parallel make jobs
# The system's apt configuration is left alone: the source package comes through a private apt config in
# LAB_ROOT/apt (same Debian archive as the system's, another suite). Prints "lab-dir DIR" last.
set -euo pipefail
: "${LAB_ROOT:?}" "${LAB_INPUTS:?}"
JOBS=${JOBS:-$(nproc)}
LAB_KERNEL=${LAB_KERNEL:-7.3}
case "$LAB_KERNEL" in
    7.3) KSUITE=trixie-backports ;;
    6.12) KSUITE=trixie ;;
    *) echo "lab: no lab kernel $LAB_KERNEL (7.3 or 6.12)" >&2; exit 2 ;;
esac
KPKG=linux-source-$LAB_KERNEL
# The kernel's own fragment (what only that version needs), merged after the common one.
EXTRA=$LAB_INPUTS/kvm-lab-$LAB_KERNEL.config
[ -f "$EXTRA" ] || EXTRA=
mkdir -p "$LAB_ROOT"
step() { echo "lab: $*"; }

APTD=$LAB_ROOT/apt-$KSUITE
# The cache keys of $VERSION's kernel and of the initramfs: sets OUT and IOUT.
keys() {
    local k ik
    k=$( { echo "$KPKG $VERSION"; cat "$LAB_INPUTS/kvm-lab.config" ${EXTRA:+"$EXTRA"}; } | sha256sum | cut -c1-16)
    ik=$(cat "$LAB_INPUTS/init" /bin/busybox 2>/dev/null | sha256sum | cut -c1-16)
    OUT=$LAB_ROOT/kernel-$k
    IOUT=$LAB_ROOT/initrd-$ik
}
if [ -n "${LAB_CHECK_ONLY:-}" ]; then
    # Only say where a build for these inputs is (no network, no build): exit 3 when there is none.
    [ -f "$APTD/version" ] || exit 3
    VERSION=$(cat "$APTD/version")
    keys
    [ -f "$OUT/bzImage" ] && [ -f "$IOUT/initrd.cpio.gz" ] || exit 3
    echo "kernel $OUT/bzImage"
    echo "initrd $IOUT/initrd.cpio.gz"
    exit 0
fi

# ---- tools (Debian packages; installed only when missing)
need=(gcc make bc flex bison libelf-dev libssl-dev cpio busybox-static xz-utils qemu-system-x86)
missing=()
for p in "${need[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    step "installing build tools: ${missing[*]}"
    [ "$(id -u)" = 0 ] || { echo "lab: need root to install ${missing[*]} (or install them yourself)" >&2; exit 2; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- which source package version (private apt config: the system's sources and state are not touched)
mkdir -p "$APTD/lists/partial" "$APTD/cache/partial"
ARCHIVE=$(apt-cache policy | awk '$2 ~ /^https?:/ && $3 ~ /\/main$/ && $3 !~ /security|updates|backports/ {print $2; exit}')
[ -n "$ARCHIVE" ] || ARCHIVE=http://deb.debian.org/debian
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${ARCHIVE%/} $KSUITE main" > "$APTD/sources.list"
APT_OPTS=(-o APT::Sandbox::User=root -o Dir::Etc::SourceList="$APTD/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::State::Lists="$APTD/lists" -o Dir::Cache::Archives="$APTD/cache"
          -o Dir::Cache::pkgcache="$APTD/pkgcache.bin" -o Dir::Cache::srcpkgcache="$APTD/srcpkgcache.bin")
step "asking Debian $KSUITE for $KPKG's version"
if apt-get "${APT_OPTS[@]}" -qq update && VERSION=$(apt-cache "${APT_OPTS[@]}" show "$KPKG" | awk '/^Version:/ {print $2; exit}') \
        && [ -n "$VERSION" ]; then
    echo "$VERSION" > "$APTD/version"
elif [ -f "$APTD/version" ]; then
    VERSION=$(cat "$APTD/version")
    step "Debian did not answer: using the version seen last time, $VERSION"
else
    echo "lab: cannot learn $KPKG's version from Debian $KSUITE (no network?)" >&2
    exit 1
fi
keys
mkdir -p "$OUT" "$IOUT"
step "inputs: $KPKG $VERSION and kvm-lab.config${EXTRA:+ and ${EXTRA##*/}} → $OUT; init and busybox → $IOUT"

# ---- kernel
if [ -f "$OUT/bzImage" ]; then
    step "kernel: cached ($OUT/bzImage)"
else
    SRC=$LAB_ROOT/src-$VERSION
    if [ ! -f "$SRC/$KPKG/Makefile" ]; then
        step "downloading $KPKG $VERSION"
        rm -f "$APTD/cache/${KPKG}_"*.deb
        (cd "$APTD/cache" && apt-get "${APT_OPTS[@]}" -qq download "$KPKG=$VERSION")
        rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
        step "unpacking the source (about a minute)"
        dpkg-deb --fsys-tarfile "$APTD/cache/${KPKG}_"*.deb | tar -x -C "$SRC.tmp" --wildcards '*.tar.xz'
        tar -xJf "$SRC.tmp/usr/src/$KPKG.tar.xz" -C "$SRC.tmp"
        rm -rf "$SRC.tmp/usr" "$APTD/cache/${KPKG}_"*.deb
        rm -rf "$SRC" && mv "$SRC.tmp" "$SRC"
    fi
    KB=$OUT/kbuild
    mkdir -p "$KB"
    step "configuring (tinyconfig + kvm-lab.config${EXTRA:+ + ${EXTRA##*/}})"
    make -C "$SRC/$KPKG" O="$KB" -s tinyconfig >/dev/null
    "$SRC/$KPKG/scripts/kconfig/merge_config.sh" -m -O "$KB" "$KB/.config" "$LAB_INPUTS/kvm-lab.config" ${EXTRA:+"$EXTRA"} >/dev/null
    make -C "$SRC/$KPKG" O="$KB" -s olddefconfig >/dev/null
    # What the fragments ask for and the kernel must keep (olddefconfig drops what a dependency lacks, silently).
    must=(KVM_SW_PROTECTED_VM KVM_AMD VIRTIO_CONSOLE 9P_FS UNIX)
    [ -n "$EXTRA" ] && must+=($(sed -n 's/^CONFIG_\([A-Z0-9_]*\)=y.*/\1/p' "$EXTRA"))
    for opt in "${must[@]}"; do
        grep -q "^CONFIG_$opt=y" "$KB/.config" || { echo "lab: CONFIG_$opt did not stick in the kernel config" >&2; exit 1; }
    done
    step "building the kernel with $JOBS jobs (5-12 min on 2 cores)"
    S=$(date +%s)
    make -C "$SRC/$KPKG" O="$KB" -s -j"$JOBS" bzImage 2>&1 | grep -v -E '^(  [A-Z]|make\[)' || true
    [ -f "$KB/arch/x86/boot/bzImage" ] || { echo "lab: the kernel build failed (see above)" >&2; exit 1; }
    step "kernel built in $(( $(date +%s) - S )) s"
    cp "$KB/.config" "$OUT/kernel.config"
    cp "$KB/arch/x86/boot/bzImage" "$OUT/bzImage.tmp" && mv "$OUT/bzImage.tmp" "$OUT/bzImage"
    rm -rf "$KB"
fi

# ---- initramfs: busybox and init (the rest comes from the host over 9p)
if [ -f "$IOUT/initrd.cpio.gz" ]; then
    step "initramfs: cached"
else
    d=$(mktemp -d "$IOUT/initrd.XXXX")
    mkdir -p "$d/bin" "$d/proc" "$d/sys" "$d/dev" "$d/host"
    cp /bin/busybox "$d/bin/busybox"
    cp "$LAB_INPUTS/init" "$d/init" && chmod 755 "$d/init"
    (cd "$d" && find . | cpio -o -H newc --quiet) | gzip -1 > "$IOUT/initrd.tmp" && mv "$IOUT/initrd.tmp" "$IOUT/initrd.cpio.gz"
    rm -rf "$d"
    step "initramfs built"
fi
printf '%s\n' "$KPKG $VERSION" > "$OUT/inputs"
echo "kernel $OUT/bzImage"
echo "initrd $IOUT/initrd.cpio.gz"
