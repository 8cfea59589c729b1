#!/usr/bin/env bash
# Install the real agent CLIs that meshd's delivery classifier is tested against.
#
# Installs into a project-local prefix (never global):
#   $MESHD_AGENT_CLIS/node_modules/.bin   claude, codex, gemini   (npm --prefix)
#   $MESHD_AGENT_CLIS/aider-venv/bin      aider                   (pip, own venv)
# Default prefix: $HOME/.cache/meshd-agent-clis
#
# Idempotent and fast when everything is already installed at the pinned versions.
# Prints the bin dir(s) on stdout (one per line); diagnostics go to stderr.
# Exit status: 0 all installed; 1 a required install failed.
#   MESHD_SKIP_AIDER=1     skip aider (heavy: ~100 MB of wheels)
#   MESHD_AIDER_OPTIONAL=1 a failed aider install is a warning, not an error
#
# Versions are pinned to what tests/corpus was recorded with; bump them together with a
# corpus refresh (python tests/corpus/record.py) and docs/delivery-classifier.md.
set -euo pipefail

CLAUDE_VERSION="2.1.330"
CODEX_VERSION="0.169.0"
GEMINI_VERSION="0.61.0"
AIDER_VERSION="0.86.2"

PREFIX="${MESHD_AGENT_CLIS:-$HOME/.cache/meshd-agent-clis}"
NODE_BIN="$PREFIX/node_modules/.bin"
AIDER_VENV="$PREFIX/aider-venv"
PYTHON="${MESHD_AIDER_PYTHON:-python3}"

die() { echo "install-agent-clis: error: $*" >&2; exit 1; }
note() { echo "install-agent-clis: $*" >&2; }

installed_npm_version() {  # $1 = package name; prints version or nothing
    local pj="$PREFIX/node_modules/$1/package.json"
    [[ -f "$pj" ]] || return 0
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$pj" 2>/dev/null || true
}

install_npm() {
    command -v npm >/dev/null || die "npm not found (need Node.js >= 20)"
    local want=("@anthropic-ai/claude-code@$CLAUDE_VERSION" "@openai/codex@$CODEX_VERSION"
                "@google/gemini-cli@$GEMINI_VERSION")
    local missing=() spec name ver
    for spec in "${want[@]}"; do
        name="${spec%@*}"; ver="${spec##*@}"
        [[ "$(installed_npm_version "$name")" == "$ver" ]] || missing+=("$spec")
    done
    if ((${#missing[@]} == 0)); then
        note "npm CLIs already at pinned versions"
        return 0
    fi
    note "npm install ${missing[*]} into $PREFIX"
    mkdir -p "$PREFIX" || die "cannot create $PREFIX"
    # --no-save keeps no package.json churn; install all pins at once so npm keeps every one.
    npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
        "${want[@]}" >&2 || die "npm install failed"
    for bin in claude codex gemini; do
        [[ -x "$NODE_BIN/$bin" ]] || die "npm install finished but $NODE_BIN/$bin is missing"
    done
}

install_aider() {
    if [[ -x "$AIDER_VENV/bin/aider" ]] &&
        [[ "$("$AIDER_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("aider-chat"))' 2>/dev/null)" == "$AIDER_VERSION" ]]; then
        note "aider already at $AIDER_VERSION"
        return 0
    fi
    note "pip install aider-chat==$AIDER_VERSION into $AIDER_VENV (slow: heavy dependencies)"
    "$PYTHON" -m venv "$AIDER_VENV" >&2 || return 1
    "$AIDER_VENV/bin/pip" install -qq --disable-pip-version-check \
        "aider-chat==$AIDER_VERSION" >&2 || return 1
    [[ -x "$AIDER_VENV/bin/aider" ]]
}

install_npm
echo "$NODE_BIN"
if [[ "${MESHD_SKIP_AIDER:-0}" != 1 ]]; then
    if install_aider; then
        echo "$AIDER_VENV/bin"
    elif [[ "${MESHD_AIDER_OPTIONAL:-0}" == 1 ]]; then
        note "warning: aider install failed; continuing without it"
    else
        die "pip install aider-chat==$AIDER_VERSION failed (set MESHD_AIDER_OPTIONAL=1 to continue)"
    fi
fi
