#!/bin/sh
# The .deb under a real systemd: boots a Debian 12 container (systemd-nspawn) with the package
# installed and runs check-systemd-inside.sh in it, as a unit, at boot:
#
#   sudo packaging/linux/check-systemd.sh DEB [RESULTS_DIR]
#
# 1. A minimal Debian 12 root (debootstrap: systemd, dbus, curl, sudo), kept as a tarball in
#    AIFINOPS_ROOTFS_TAR (default ~/.cache/aifinops-build/rootfs-bookworm.tar; delete it to
#    rebuild) and unpacked into a scratch folder for every run.
# 2. A throw-away share with a signed policy, made with the admin CLI (AIFINOPS_CLI, default
#    `aifinops` on PATH, else this checkout's .venv/bin/aifinops), bound into the container as
#    /srv/company-share.
# 3. The package installed while no systemd runs (as when an image is built: postinst only
#    enables the service), then the container booted: the agent starts from the enable link,
#    and the inside script checks it (see there), upgrades, removes and purges the package,
#    then powers the container off.
#
# Exit status 0 when every check passed. RESULTS_DIR (default: a new folder, printed) keeps
# check.log (every check and its evidence), install.log, console.log (the container's boot)
# and status (PASS or FAIL). Needs root, systemd-nspawn (systemd-container) and, for the first
# run, debootstrap. The container has its own network namespace (loopback only): its agent's
# port 8765 is not the host's.
set -eu

[ $# -ge 1 ] || { echo "usage: $0 DEB [RESULTS_DIR]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
deb=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
[ -f "$deb" ] || { echo "$0: $deb is not a file" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (debootstrap, systemd-nspawn)" >&2; exit 2; }
command -v systemd-nspawn > /dev/null || { echo "$0: no systemd-nspawn: apt-get install systemd-container" >&2; exit 2; }

cache=${AIFINOPS_ROOTFS_TAR:-${XDG_CACHE_HOME:-$HOME/.cache}/aifinops-build/rootfs-bookworm.tar}
mirror=${AIFINOPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cli=${AIFINOPS_CLI:-$(command -v aifinops || echo "$repo/.venv/bin/aifinops")}
[ -x "$cli" ] || { echo "$0: no admin CLI at $cli: set AIFINOPS_CLI or run make setup" >&2; exit 2; }
timeout_s=${AIFINOPS_CHECK_TIMEOUT_S:-900}

if [ $# -ge 2 ]; then
    results=$(mkdir -p "$2" && cd "$2" && pwd)
else
    results=$(mktemp -d /var/tmp/aifinops-systemd-check.XXXXXX)
fi
rm -f "$results/status" "$results/check.log" "$results/install.log" "$results/console.log"
chmod 0755 "$results"

work=$(mktemp -d /var/tmp/aifinops-nspawn.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
start=$(date +%s)
say() { echo "check-systemd: [$(($(date +%s) - start)) s] $*"; }

# -- 1. the root file system ----------------------------------------------------------------
if [ ! -s "$cache" ]; then
    command -v debootstrap > /dev/null || { echo "$0: no debootstrap: apt-get install debootstrap" >&2; exit 2; }
    say "no $cache yet: debootstrap bookworm from $mirror (once, about a minute)"
    mkdir -p "$(dirname "$cache")" "$work/bootstrap"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,ca-certificates,curl,sudo \
        bookworm "$work/bootstrap" "$mirror" > "$results/debootstrap.log" 2>&1 ||
        { tail -n 20 "$results/debootstrap.log" >&2; exit 1; }
    # Nothing of this host in the image: no machine id (systemd makes one at each boot).
    rm -f "$work/bootstrap/etc/machine-id" "$work/bootstrap/var/lib/dbus/machine-id"
    tar -C "$work/bootstrap" -cf "$cache.partial" .
    mv "$cache.partial" "$cache"
    rm -rf "$work/bootstrap"
fi
mkdir "$root"
tar -C "$root" -xf "$cache"
for exe in usr/bin/curl usr/bin/sudo lib/systemd/systemd; do
    [ -x "$root/$exe" ] || { echo "$0: $cache has no /$exe: delete it to rebuild it" >&2; exit 1; }
done
say "root file system ready"

# -- 2. a share with a signed policy --------------------------------------------------------
share=$work/share
mkdir -p "$share" "$work/admin"
chmod 0755 "$work" "$share"
cat > "$work/admin/policy.toml" << 'EOF'
# The systemd check's policy: engineering may use the local model, research only a cloud one.
version = 1
organisation = "systemd check"
timezone = "UTC"
default_department = "general"

[departments.engineering]
allowed_models = ["local", "auto"]

[departments.research]
allowed_models = ["gpt-4o-mini"]

[[budgets]]
name = "per-user-daily"
scope = "user"
match = "*"
period = "day"
amount_usd = "5.00"
action = "block"
EOF
pubkey=$(AIFINOPS_HOME=$work/admin/home "$cli" policy keygen --out "$work/admin/keys" |
    grep -o 'ed25519:[A-Za-z0-9+/=]*')
AIFINOPS_HOME=$work/admin/home "$cli" policy publish "$work/admin/policy.toml" --share "$share" \
    --key "$work/admin/keys/policy_signing_key.pem" > /dev/null
find "$share" -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
# Agents publish their ledgers to <share>/fleet/ (a folder every host may write, as on a real share).
mkdir -p "$share/fleet" && chmod 1777 "$share/fleet"
say "share with a signed policy (version 1) ready"

# -- 3. install as an image build would (no systemd running), then boot ---------------------
install -m 0755 "$here/check-systemd-inside.sh" "$root/usr/local/sbin/aifinops-systemd-check"
printf 'AIFINOPS_PUBKEY=%s\n' "$pubkey" > "$root/etc/aifinops-systemd-check.env"
cat > "$root/etc/systemd/system/aifinops-systemd-check.service" << 'EOF'
[Unit]
Description=aifinops: check the installed package under systemd, then power off
After=multi-user.target
[Service]
Type=exec
EnvironmentFile=/etc/aifinops-systemd-check.env
ExecStart=/usr/local/sbin/aifinops-systemd-check /results
ExecStopPost=/bin/systemctl poweroff --no-block
TimeoutStartSec=infinity
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
EOF
ln -s /etc/systemd/system/aifinops-systemd-check.service \
    "$root/etc/systemd/system/multi-user.target.wants/aifinops-systemd-check.service"

# --register=no --keep-unit: the host needs no systemd of its own (CI containers, this VM).
nspawn() {
    timeout "$timeout_s" systemd-nspawn --quiet --register=no --keep-unit --private-network -D "$root" -M aifinops-check \
        --bind="$share:/srv/company-share" --bind-ro="$deb:/srv/aifinops.deb" --bind="$results:/results" "$@"
}
say "installing $(basename "$deb") with no systemd running"
if ! nspawn --setenv=AIFINOPS_SHARE=/srv/company-share --setenv=AIFINOPS_PUBKEY="$pubkey" \
    dpkg --install /srv/aifinops.deb > "$results/install.log" 2>&1; then
    cat "$results/install.log" >&2
    echo "FAIL" > "$results/status"
    exit 1
fi
say "installed; booting the container"
nspawn --boot > "$results/console.log" 2>&1 || true
status=$(cat "$results/status" 2> /dev/null || echo "FAIL (the check did not finish: see $results/console.log)")
say "container powered off: $status"
grep -e '^ok ' -e '^FAIL ' "$results/check.log" 2> /dev/null || tail -n 40 "$results/console.log"
echo "check-systemd: results in $results"
[ "$status" = PASS ]
