#!/usr/bin/env bash
# The test command: installs on a bare machine whatever the tests need, then runs them.
#
#   ./scripts/test.sh              everything (what CI runs)
#   ./scripts/test.sh -k journal   extra arguments go to pytest
#
# Installs, only when missing: Debian packages (tmux, openssh, procps, git) via apt,
# a virtualenv in .venv with meshd and its test extras, and the real agent CLIs
# (scripts/install-agent-clis.sh; skip with MESHD_SKIP_AGENT_CLIS=1).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_missing=()
# cc builds the crash shim of tests/test_locks_powercut.py; gcc only recommends libc6-dev (the C
# headers), which --no-install-recommends skips, so it is checked by its stdio.h below.
for pair in tmux:tmux ssh:openssh-client sshd:openssh-server ps:procps git:git ip:iproute2 \
            nft:nftables setfacl:acl runuser:util-linux useradd:passwd node:nodejs npm:npm \
            cc:gcc; do
    cmd=${pair%%:*} pkg=${pair#*:}
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
        apt_missing+=("$pkg")
    fi
done
[ -f /usr/include/stdio.h ] || apt_missing+=(libc6-dev)
if [ ${#apt_missing[@]} -gt 0 ]; then
    echo "test.sh: installing Debian packages: ${apt_missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${apt_missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.meshd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi

if [ "${MESHD_SKIP_AGENT_CLIS:-0}" != 1 ] && [ -x scripts/install-agent-clis.sh ]; then
    scripts/install-agent-clis.sh >/dev/null || echo "test.sh: agent CLIs could not be installed; their live tests will say so and skip" >&2
fi

.venv/bin/ruff check src tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
