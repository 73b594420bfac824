#!/usr/bin/env bash
# The demo (README's first command): a VM that upgrades itself. Installs what it needs (as root; as
# another user it prints the apt-get line and stops), builds upgradectl, then runs boot scenarios 2 and 3
# in QEMU with the serial console streaming here, and ends with a summary. ~6 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
# apt's progress goes to a log; as a non-root user the script prints the apt-get line on stderr and stops.
echo "installing system packages (log: /tmp/upgradectl-demo-apt.log)"
bash scripts/install-deps.sh > /tmp/upgradectl-demo-apt.log
# npm ci only when the installed tree does not match the lock file (a re-run should not re-download).
if ! npm ls --silent >/dev/null 2>&1; then npm ci --no-audit --no-fund; fi
npm run --silent build
# The demo drives the same harness as the boot tests (test/boot/), in TypeScript, through tap's loader.
export TS_NODE_TRANSPILE_ONLY=1
exec node --import @tapjs/typescript/import demo/run.ts "$@"
