#!/bin/sh
# Runs INSIDE the container that check-systemd.sh boots, as the unit aifinops-systemd-check at
# the end of the boot, with the package already installed (enabled, never started: no systemd
# ran at install time). Checks the system service under the real systemd, following
# docs/DEPLOY.md and packaging/linux/README.linux.md literally, then upgrades, removes and
# purges the package. Writes RESULTS/check.log ("ok ..." / "FAIL ..." lines, each with its
# evidence indented below) and RESULTS/status (PASS or FAIL). Not for a real machine: it
# purges aifinops and its ledger.
set -u

out=${1:-/results}
exec > "$out/check.log" 2>&1
failures=0
url=http://127.0.0.1:8765
unit=aifinops-agent.service
admin="sudo -u aifinops env AIFINOPS_HOME=/var/lib/aifinops AIFINOPS_CONFIG=/etc/aifinops/config.toml"
export COLUMNS=160 # doctor's table, unwrapped

ok() { echo "ok $*"; }
fail() {
    echo "FAIL $*"
    failures=$((failures + 1))
}
evidence() { awk '{ print "    " $0 }'; } # each line indented, the last one ended
# expect WHAT COMMAND...: ok when COMMAND succeeds.
expect() {
    what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
# wait_for SECONDS COMMAND...: until COMMAND succeeds (quietly), at most SECONDS.
wait_for() {
    left=$1
    shift
    until "$@" > /dev/null 2>&1; do
        left=$((left - 1))
        [ "$left" -gt 0 ] || return 1
        sleep 1
    done
}
prop() { systemctl show -P "$1" "$unit"; }
answers() { curl -fsS --max-time 5 "$url/api/v1/info"; }
# chat TOKEN MODEL: a chat completion; prints the HTTP status, keeps headers and body in /tmp.
chat() {
    curl -sS --max-time 300 -D /tmp/chat.headers -o /tmp/chat.body -w '%{http_code}' \
        -H "Authorization: Bearer $1" -H 'Content-Type: application/json' \
        -d "{\"model\": \"$2\", \"max_tokens\": 8, \"messages\": [{\"role\": \"user\", \"content\": \"Say hello.\"}]}" \
        "$url/v1/chat/completions"
}
data_kept() { [ -s /var/lib/aifinops/data/ledger.db ] && [ -s /var/lib/aifinops/config/token ]; }
config_and_data_kept() { [ -s /etc/aifinops/config.toml ] && data_kept && getent passwd aifinops > /dev/null; }
all_gone() {
    [ ! -e /etc/aifinops ] && [ ! -e /var/lib/aifinops ] && ! getent passwd aifinops > /dev/null &&
        ! getent group aifinops > /dev/null
}
# contains TEXT REGEX, lacks TEXT REGEX (case-insensitive)
contains() { printf '%s\n' "$1" | grep -Eq "$2"; }
lacks() { ! printf '%s\n' "$1" | grep -Eqi "$2"; }
no_process_of_aifinops() {
    for p in /proc/[0-9]*; do
        [ "$(stat -c %U "$p" 2> /dev/null)" = aifinops ] && return 1
    done
    return 0
}

echo "systemd $(systemctl --version | head -n 1 | cut -d' ' -f2), $(grep '^PRETTY_NAME=' /etc/os-release | cut -d'"' -f2)," \
    "system state: $(systemctl is-system-running)"

# -- the service, started at boot from the enable link the install left ----------------------
expect "the install (no systemd running) enabled $unit" [ "$(systemctl is-enabled $unit)" = enabled ]
if wait_for 180 answers; then
    ok "the agent started at boot answers $url/api/v1/info"
    answers | evidence
else
    fail "the agent started at boot answers $url/api/v1/info within 180 s"
fi
expect "systemctl is-active $unit: active" [ "$(systemctl is-active $unit)" = active ]
echo "network-online.target: $(systemctl is-active network-online.target) (no network in here but loopback)" | evidence
systemd-analyze security --no-pager "$unit" 2>&1 | tail -n 1 | evidence
systemctl show -p User -p Group -p Environment -p ExecStart -p MainPID -p UMask -p ProtectSystem \
    -p ReadWritePaths -p NRestarts "$unit" | evidence
expect "runs as User=aifinops Group=aifinops" [ "$(prop User):$(prop Group)" = aifinops:aifinops ]
expect "its environment: AIFINOPS_HOME=/var/lib/aifinops AIFINOPS_CONFIG=/etc/aifinops/config.toml" \
    [ "$(prop Environment)" = "AIFINOPS_HOME=/var/lib/aifinops AIFINOPS_CONFIG=/etc/aifinops/config.toml" ]
pid=$(prop MainPID)
expect "the main process ($pid) belongs to aifinops" [ "$(stat -c %U "/proc/$pid")" = aifinops ]
expect "the service user's ledger and token are in /var/lib/aifinops" data_kept
find /var/lib/aifinops -maxdepth 2 -printf '%M %u:%g %p\n' | evidence
verify=$(systemd-analyze verify /usr/lib/systemd/system/$unit 2>&1)
expect "systemd-analyze verify $unit: clean" [ -z "$verify" ]
echo "$verify" | evidence

# -- a user and a token, as docs/DEPLOY.md says ----------------------------------------------
cd /
added=$($admin aifinops users add alice --department engineering 2>&1)
echo "$added" | evidence
token=$(echo "$added" | grep -o 'afo_[A-Za-z0-9_-]*' | head -n 1)
expect "DEPLOY.md's 'sudo -u aifinops env ... aifinops users add alice' printed a token" [ -n "$token" ]

useradd --create-home --shell /bin/bash alice
# DEPLOY.md's line for the user's token file (bash, as the user).
runuser -u alice -- bash -c "install -D -m 600 /dev/stdin ~/.config/aifinops/token <<< '$token'"
expect "alice's token file is hers alone (0600)" \
    [ "$(stat -c %U:%a /home/alice/.config/aifinops/token)" = alice:600 ]
doctor=$(runuser -u alice -- env AIFINOPS_CONFIG=/etc/aifinops/config.toml aifinops doctor 2>&1)
echo "$doctor" | grep -E ' (agent|token|policy|share) ' | evidence
expect "doctor as alice: the agent line says running" contains "$doctor" " agent +running"
expect "doctor as alice: the token line names her token file" \
    contains "$doctor" " token +/home/alice/.config/aifinops/token"
expect "doctor as alice: the policy in force is the system agent's (version 1)" \
    contains "$doctor" " policy +in force at the running agent: version 1"

code=$(chat "$token" local)
{ echo "HTTP $code"; grep -i '^x-aifinops' /tmp/chat.headers; cat /tmp/chat.body; echo; } | evidence
expect "a chat completion with alice's token: HTTP 200" [ "$code" = 200 ]
expect "... answered by the local model (X-AIFinOps-Route: local)" grep -qi '^x-aifinops-route: local' /tmp/chat.headers
expect "... with a non-empty answer" grep -q '"content": *"[^"]' /tmp/chat.body

# -- the policy from the share is in force ---------------------------------------------------
doctor=$($admin aifinops doctor 2>&1)
echo "$doctor" | grep -E ' (policy|share) ' | evidence
expect "doctor as the service user: policy version 1 in force" \
    contains "$doctor" " policy +in force at the running agent: version 1"
expect "doctor as the service user: the share's policy is signed by the installed key" \
    contains "$doctor" " policy +share: version 1, signed by"
bob=$($admin aifinops users add bob --department research 2>&1 | grep -o 'afo_[A-Za-z0-9_-]*' | head -n 1)
code=$(chat "$bob" local)
{ echo "HTTP $code"; cat /tmp/chat.body; echo; } | evidence
expect "the policy refuses the local model to bob of research (gpt-4o-mini only): HTTP 403" [ "$code" = 403 ]
expect "... saying model_not_allowed" grep -q model_not_allowed /tmp/chat.body

# -- the agent publishes its ledger to the share's fleet folder ------------------------------
if wait_for 60 sh -c 'ls /srv/company-share/fleet/*/summary.json'; then
    ok "the agent published to the share (/srv/company-share/fleet/<host-id>/summary.json)"
else
    fail "the agent published to the share within 60 s"
fi
hosts=$($admin aifinops fleet hosts --share /srv/company-share 2>&1)
echo "$hosts" | evidence
expect "fleet hosts lists this host with policy version 1" contains "$hosts" "$(hostname).* 1 "

journal=$(journalctl -u $unit --no-pager -o cat)
echo "$journal" | evidence
expect "journalctl -u $unit: no traceback, ERROR, WARNING or permission problem" \
    lacks "$journal" "traceback| (error|warning|critical) |permission denied|read-only file system|failed with"

# -- restart on failure, clean stop ----------------------------------------------------------
pid=$(prop MainPID)
kill -9 "$pid"
if wait_for 60 sh -c "[ \"\$(systemctl show -P NRestarts $unit)\" = 1 ] && [ \"\$(systemctl is-active $unit)\" = active ] && curl -fsS $url/api/v1/info"; then
    ok "kill -9 of the main process ($pid): systemd restarted it, it answers again (new PID $(prop MainPID))"
else
    fail "kill -9 of the main process ($pid): restarted and answering within 60 s"
fi
journalctl -u $unit --no-pager -o cat | grep -e 'status=9/KILL' -e 'Scheduled restart' | evidence

systemctl stop $unit
systemctl show -p ActiveState -p Result -p ExecMainCode -p ExecMainStatus "$unit" | evidence
# ExecMainCode 1 is CLD_EXITED: the agent exited by itself on SIGTERM, with status 0.
if [ "$(prop ActiveState):$(prop Result):$(prop ExecMainCode):$(prop ExecMainStatus)" = inactive:success:1:0 ]; then
    ok "systemctl stop: inactive, Result=success, the agent exited 0 by itself"
else
    fail "systemctl stop: inactive, Result=success, the agent exited 0 by itself"
    journalctl -u $unit --no-pager -o cat | tail -n 60 | evidence
fi
expect "... within TimeoutStopSec (no SIGKILL)" \
    lacks "$(journalctl -u $unit --no-pager -o cat)" "timed out. Killing"

# -- upgrade with systemd running: the enabled service is restarted --------------------------
systemctl start $unit
wait_for 180 answers
before=$(prop MainPID)
token_file=$(cat /var/lib/aifinops/config/token)
if dpkg --install /srv/aifinops.deb > /tmp/upgrade.log 2>&1; then ok "upgrade (dpkg -i again)"; else fail "upgrade (dpkg -i again)"; fi
evidence < /tmp/upgrade.log
after=$(prop MainPID)
expect "after the upgrade the service is active" [ "$(systemctl is-active $unit)" = active ]
expect "... as a new process ($before -> $after)" [ "$after" != "$before" ]
expect "... and answers" wait_for 180 answers
expect "... with the same service token" [ "$(cat /var/lib/aifinops/config/token)" = "$token_file" ]
code=$(chat "$token" local)
expect "... and alice's token still works (HTTP $code)" [ "$code" = 200 ]

# -- remove, purge ---------------------------------------------------------------------------
if dpkg --remove aifinops > /tmp/remove.log 2>&1; then ok "dpkg -r aifinops"; else fail "dpkg -r aifinops"; fi
evidence < /tmp/remove.log
expect "after dpkg -r: the service is stopped" [ "$(systemctl is-active $unit)" != active ]
expect "... no process of the user aifinops is left" no_process_of_aifinops
expect "... the program is gone" [ ! -e /opt/aifinops ]
expect "... the unit file is gone" [ ! -e /usr/lib/systemd/system/$unit ]
expect "... config, ledger, token and the user are kept" config_and_data_kept

if dpkg --purge aifinops > /tmp/purge.log 2>&1; then ok "dpkg -P aifinops"; else fail "dpkg -P aifinops"; fi
evidence < /tmp/purge.log
expect "after dpkg -P: /etc/aifinops, /var/lib/aifinops, the user and group are gone" all_gone
expect "... and systemd knows no $unit any more" \
    [ -z "$(systemctl list-unit-files --no-legend $unit)" ]
expect "... the enable link is gone" [ ! -e /etc/systemd/system/multi-user.target.wants/$unit ]

if [ "$failures" -eq 0 ]; then
    echo PASS > "$out/status"
else
    echo "FAIL ($failures checks failed)" > "$out/status"
fi
