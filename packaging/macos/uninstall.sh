#!/bin/sh
# Remove aifinops from this Mac (macOS has no package uninstaller):
#   sudo /usr/local/share/aifinops/uninstall.sh            keeps ledger, tokens, config, logs
#   sudo /usr/local/share/aifinops/uninstall.sh --purge    removes them and the _aifinops user
# Per-user data (~/Library/Application Support/aifinops, ~/Library/Logs/aifinops) is left to
# each user.
set -u

if [ "$(id -u)" != "0" ]; then
    echo "run as root: sudo $0 $*" >&2
    exit 1
fi
purge=no
[ "${1:-}" = "--purge" ] && purge=yes

launchctl bootout system/com.aifinops.agent 2>/dev/null || true
for uid in $(ps -axo uid= -o comm= | awk '/aifinops/ {print $1}' | sort -u) $(stat -f %u /dev/console); do
    [ "$uid" = "0" ] && continue
    launchctl bootout "gui/$uid/com.aifinops.tray" 2>/dev/null || true
    launchctl bootout "gui/$uid/com.aifinops.agent.user" 2>/dev/null || true
done
rm -f /Library/LaunchDaemons/com.aifinops.agent.plist \
    /Library/LaunchAgents/com.aifinops.agent.user.plist \
    /Library/LaunchAgents/com.aifinops.tray.plist \
    /usr/local/bin/aifinops /usr/local/bin/aifinops-tray
rm -rf /Applications/aifinops.app
pkgutil --forget com.aifinops.pkg >/dev/null 2>&1 || true

if [ "$purge" = "yes" ]; then
    rm -rf "/Library/Application Support/aifinops" /Library/Logs/aifinops /Library/Preferences/aifinops
    dscl . -delete /Users/_aifinops 2>/dev/null || true
    dscl . -delete /Groups/_aifinops 2>/dev/null || true
    echo "aifinops removed, with its data and config"
else
    echo "aifinops removed; kept /Library/Application Support/aifinops, /Library/Logs/aifinops, /Library/Preferences/aifinops"
fi
rm -rf /usr/local/share/aifinops
