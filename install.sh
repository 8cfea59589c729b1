#!/usr/bin/env bash
# Install, upgrade or remove meshd for the current user.  See docs/install.md.
#
#   ./install.sh                       install or upgrade in place (idempotent)
#   ./install.sh --uninstall           remove programs, hooks, units; keep ~/.agents
#   ./install.sh --uninstall --purge   ... and delete ~/.agents and ~/.agent-inbox too
#
# Environment: MESHD_HOME (state dir, default ~/.agents), MESHD_INBOX (default ~/.agent-inbox),
# MESHD_PYTHON (interpreter for the venv), MESHD_PIP_ARGS (extra pip arguments, split on
# whitespace), MESHD_INSTALL_NO_START=1 (start nothing: for tests), XDG_DATA_HOME, XDG_CONFIG_HOME.
set -euo pipefail
# bash >= 5.2 would treat '&' in a ${var//pat/rep} replacement as the match; paths may hold '&'.
shopt -u patsub_replacement 2>/dev/null || true

readonly HOOK_INDEX=42  # tmux hook array index owned by meshd; also in hooks/meshd.tmux.conf
readonly TMUX_BEGIN='# >>> meshd hooks >>>'
readonly TMUX_END='# <<< meshd hooks <<<'
readonly CRON_BEGIN='# >>> meshd cron >>>'
readonly CRON_END='# <<< meshd cron <<<'
readonly PROGRAMS=(mesh meshd notify-pane)
readonly UNITS=(meshd.service meshd-resync.service meshd-resync.timer)
readonly MIN_PYTHON=3.11 MIN_TMUX=3.2

REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
readonly REPO_DIR
readonly DATA_DIR="${XDG_DATA_HOME:-$HOME/.local/share}/meshd"
readonly VENV="$DATA_DIR/venv"
readonly BIN_DIR="$HOME/.local/bin"
readonly UNIT_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
readonly STATE_HOME="${MESHD_HOME:-$HOME/.agents}"
readonly INBOX="${MESHD_INBOX:-$HOME/.agent-inbox}"
readonly MESH_LINK="$BIN_DIR/mesh"

DONE=()       # summary lines, printed at the end
WARNINGS=()   # repeated at the end so they are not lost in pip's output
WORK=''       # scratch directory, removed on exit

say() { printf 'meshd: %s\n' "$*"; }
warn() { printf 'meshd: warning: %s\n' "$*" >&2; WARNINGS+=("$*"); }
die() { printf 'meshd: error: %s\n' "$*" >&2; exit 1; }
did() { DONE+=("$*"); }
cleanup() { [[ -z $WORK ]] || rm -rf -- "$WORK"; }
trap cleanup EXIT
scratch_file() { mktemp "$WORK/tmp.XXXXXX"; }
truthy() { [[ -n ${1:-} && $1 != 0 ]]; }
no_start() { truthy "${MESHD_INSTALL_NO_START:-}"; }

usage() {
  cat <<EOF
Usage: ./install.sh [--uninstall [--purge]] [--help]

Installs meshd for the current user (no root needed); re-run it to upgrade.
  - virtualenv:   ${VENV}
  - programs:     ${BIN_DIR}/{mesh,meshd,notify-pane} (symlinks into the venv)
  - state:        ${STATE_HOME} (0700; config.toml and self.conf only if absent)
  - tmux hooks:   block between '${TMUX_BEGIN}' and '${TMUX_END}' in ~/.tmux.conf
  - service:      systemd user units in ${UNIT_DIR},
                  or a crontab block when there is no user systemd

Options:
  --uninstall   stop meshd and remove everything above except ${STATE_HOME} and ${INBOX}
  --purge       with --uninstall: delete ${STATE_HOME} and ${INBOX} as well
  --peer-key    make a dedicated meshd SSH key (~/.ssh/meshd_ed25519, no passphrase) and
                print the line a peer adds to its authorized_keys (or runs --authorize with)
  --authorize=PUBKEY_FILE
                let a peer's meshd key in: add it to ~/.ssh/authorized_keys restricted to
                'meshd link' (restrict,command=...: no shell, PTY, forwarding or agent)
  -h, --help    show this help

Environment: MESHD_HOME, MESHD_INBOX, MESHD_PYTHON, MESHD_PIP_ARGS,
MESHD_INSTALL_NO_START=1 (install but start nothing). Details: docs/install.md
EOF
}

# --- quoting: each layer a path passes through gets its own escaping ---------------------

sh_quote() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

# For a tmux double-quoted string whose text run-shell format-expands and then gives to sh.
tmux_quote() {
  local s
  s=$(sh_quote "$1")
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//\$/\\\$}; s=${s//#/##}
  printf '%s' "$s"
}

# For the program word of a systemd Exec= line (quotes, C escapes, %-specifiers, $-variables).
systemd_quote() {
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//%/%%}; s=${s//\$/\$\$}
  printf '"%s"' "$s"
}

# For a crontab command: cron turns an unescaped % into a newline.
cron_quote() { local s; s=$(sh_quote "$1"); printf '%s' "${s//%/\\%}"; }

# --- marker blocks (tmux.conf, crontab) ---------------------------------------------------

# render_with_block FILE BEGIN END [BLOCK_FILE]
# Prints FILE with its BEGIN..END blocks removed; the first one is replaced by BLOCK_FILE, or
# BLOCK_FILE is appended if there was none.  Every other byte passes through unchanged,
# including a last line without a newline.  Fails on a BEGIN with no END.
render_with_block() {
  local file=$1 begin=$2 end=$3 block=${4:-} line nl tail_nl=$'\n' inside=0 placed=0
  if [[ -f $file ]]; then
    while :; do
      if IFS= read -r line; then nl=$'\n'; elif [[ -n $line ]]; then nl=''; else break; fi
      if ((inside)); then
        [[ $line == "$end" ]] && inside=0
        continue
      fi
      if [[ $line == "$begin" ]]; then
        inside=1
        if [[ -n $block ]] && ((!placed)); then cat -- "$block"; placed=1; tail_nl=$'\n'; fi
        continue
      fi
      printf '%s%s' "$line" "$nl"
      tail_nl=$nl
    done <"$file"
  fi
  ((!inside)) || return 1
  if [[ -n $block ]] && ((!placed)); then
    [[ -n $tail_nl ]] || printf '\n'
    cat -- "$block"
  fi
}

# write_with_block FILE BEGIN END [BLOCK_FILE]: rewrite FILE in place (through a symlink,
# keeping its mode) only if its content changes.  Returns 0 if it wrote, 1 if nothing changed.
write_with_block() {
  local file=$1 new
  new=$(scratch_file)
  render_with_block "$@" >"$new" ||
    die "$file has '$2' without a matching '$3' line; fix it by hand and re-run"
  if [[ -f $file ]] && cmp -s -- "$new" "$file"; then return 1; fi
  cat -- "$new" >"$file"
}

has_block() { [[ -f $1 ]] && grep -qxF -- "$2" "$1"; }

# --- prerequisites -------------------------------------------------------------------------

version_at_least() {  # version_at_least "3.3a" 3.2
  local have_major have_minor want_major=${2%%.*} want_minor=${2#*.}
  [[ $1 =~ ([0-9]+)\.([0-9]+) ]] || return 1
  have_major=${BASH_REMATCH[1]} have_minor=${BASH_REMATCH[2]}
  ((have_major > want_major || (have_major == want_major && have_minor >= want_minor)))
}

find_python() {  # prints the first interpreter that is new enough and can make a venv
  local candidate
  for candidate in ${MESHD_PYTHON:+"$MESHD_PYTHON"} python3 python3.13 python3.12 python3.11; do
    command -v -- "$candidate" >/dev/null 2>&1 || continue
    "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || continue
    # Debian ships the venv module without ensurepip unless python3-venv is installed.
    "$candidate" -c 'import venv, ensurepip' 2>/dev/null || continue
    command -v -- "$candidate"
    return 0
  done
  return 1
}

PY=''
check_prerequisites() {
  local missing=() packages=() found tmux_version apt='sudo apt-get install -y'
  [[ $(id -u) != 0 ]] || apt='apt-get install -y'
  if ! PY=$(find_python); then
    if ! command -v python3 >/dev/null 2>&1; then
      missing+=("python3 >= ${MIN_PYTHON} with the venv module (no python3 found)")
      packages+=(python3 python3-venv)
    elif python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      missing+=("the python3 venv module (python3 -m venv needs ensurepip)")
      packages+=(python3-venv)
    else
      found=$(python3 -V 2>&1 || true)
      missing+=("python3 >= ${MIN_PYTHON} with the venv module (found: ${found})")
      packages+=(python3 python3-venv)
    fi
  fi
  if ! command -v tmux >/dev/null 2>&1; then
    missing+=("tmux >= ${MIN_TMUX} (not found)")
    packages+=(tmux)
  else
    tmux_version=$(tmux -V 2>/dev/null || true)
    if [[ $tmux_version =~ [0-9]+\.[0-9]+ ]]; then
      version_at_least "$tmux_version" "$MIN_TMUX" || {
        missing+=("tmux >= ${MIN_TMUX} (found: ${tmux_version})")
        packages+=(tmux)
      }
    else
      warn "cannot read the tmux version from '${tmux_version}'; assuming a development build"
    fi
  fi
  if ! command -v ssh >/dev/null 2>&1; then
    missing+=("ssh client (needed to reach peers)")
    packages+=(openssh-client)
  fi
  if ((${#missing[@]})); then
    printf 'meshd: error: missing prerequisites:\n' >&2
    printf '  - %s\n' "${missing[@]}" >&2
    printf 'Install them with:\n  %s %s\n' "$apt" "${packages[*]}" >&2
    printf '(tmux %s or newer may need a backport or a newer release on old distributions.)\n' \
      "$MIN_TMUX" >&2
    exit 1
  fi
  if ! command -v sshd >/dev/null 2>&1 && [[ ! -x /usr/sbin/sshd ]]; then
    warn "no sshd: this host can reach its peers, but peers cannot reach it" \
      "(optional: ${apt} openssh-server)"
  fi
}

# --- install steps -------------------------------------------------------------------------

install_venv() {
  local src pip_args=()
  if [[ -e $VENV ]] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
    warn "rebuilding the broken virtualenv at $VENV (was its python removed?)"
    rm -rf -- "$VENV"
  fi
  if [[ ! -e $VENV ]]; then
    mkdir -p -- "$DATA_DIR"
    "$PY" -m venv -- "$VENV"
    did "created the virtualenv $VENV ($("$VENV/bin/python" -V 2>&1))"
  fi
  # Build from a clean copy: pip builds a local directory in place, and setuptools' build/
  # keeps modules deleted from the source; the copy also leaves the checkout untouched.
  src="$WORK/src"
  "$PY" - "$REPO_DIR" "$src/meshd" <<'PYTHON'
import shutil, sys
root = sys.argv[1]
top_skip = {".git", ".venv", "venv", "build", "dist", "node_modules", ".cache"}
any_skip = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}
def ignore(folder, names):
    return [n for n in names if n in any_skip or n.endswith(".egg-info")
            or (folder == root and n in top_skip)]
shutil.copytree(root, sys.argv[2], ignore=ignore, symlinks=True)
PYTHON
  # Word-split on purpose: MESHD_PIP_ARGS holds several arguments.
  [[ -z ${MESHD_PIP_ARGS:-} ]] || read -r -a pip_args <<<"$MESHD_PIP_ARGS"
  say "installing meshd from $REPO_DIR into $VENV (pip)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
    ${pip_args[@]+"${pip_args[@]}"} -- "$src/meshd"
  did "installed meshd $("$VENV/bin/python" -c \
    'import importlib.metadata as m; print(m.version("meshd"))') into the virtualenv"
}

link_programs() {
  local program target link
  mkdir -p -- "$BIN_DIR"
  for program in "${PROGRAMS[@]}"; do
    target="$VENV/bin/$program" link="$BIN_DIR/$program"
    [[ -x $target ]] || die "pip did not install $target (is [project.scripts] complete?)"
    if [[ -e $link && ! -L $link ]]; then
      # e.g. agent-mesh's notify-pane script: keep it, restored by --uninstall.
      mv -- "$link" "$link.pre-meshd"
      warn "moved the existing $link to $link.pre-meshd"
    fi
    ln -sfn -- "$target" "$link"
  done
  did "linked ${PROGRAMS[*]} into $BIN_DIR"
  case ":$PATH:" in
    *":$BIN_DIR:"*) ;;
    *) warn "$BIN_DIR is not on PATH; add this line to ~/.profile or ~/.bashrc:" \
      "export PATH=\"\$HOME/.local/bin:\$PATH\"" ;;
  esac
}

init_state_dir() {
  local config="$STATE_HOME/config.toml" self_conf="$STATE_HOME/self.conf" out err host
  mkdir -p -- "$STATE_HOME"
  chmod 700 -- "$STATE_HOME"
  if [[ ! -e $config ]]; then
    out=$(scratch_file) err=$(scratch_file)
    # `mesh config init` may write the file itself or print it; accept either.
    if MESHD_HOME="$STATE_HOME" "$VENV/bin/mesh" config init >"$out" 2>"$err" &&
      { [[ -e $config ]] || { [[ -s $out ]] && install -m 600 -- "$out" "$config"; }; }; then
      did "wrote a default $config"
    else
      rm -f -- "$config"   # it was absent before: leave nothing half-written
      warn "'mesh config init' failed, so no config.toml was written (meshd uses its defaults):" \
        "$(tail -n 3 -- "$err")"
    fi
  fi
  if [[ ! -e $self_conf ]]; then
    host=$(uname -n)
    printf '%s\n' "${host%%.*}" >"$self_conf"
    did "wrote $self_conf (this host's mesh name: ${host%%.*})"
  fi
}

# tmux reads the first of these that exists; creating ~/.tmux.conf would hide an XDG one.
tmux_conf_candidates() {
  printf '%s\n' "$HOME/.tmux.conf"
  [[ -z ${XDG_CONFIG_HOME:-} ]] || printf '%s\n' "$XDG_CONFIG_HOME/tmux/tmux.conf"
  printf '%s\n' "$HOME/.config/tmux/tmux.conf"
}

tmux_conf_path() {
  local candidate
  while IFS= read -r candidate; do
    if [[ -e $candidate || -L $candidate ]]; then printf '%s' "$candidate"; return; fi
  done < <(tmux_conf_candidates)
  printf '%s' "$HOME/.tmux.conf"
}

tmux_running() { command -v tmux >/dev/null 2>&1 && tmux list-sessions >/dev/null 2>&1; }

# Prints "event[index]" for each set-hook line in the files given (blocks or templates).
hook_names() { grep -ohE 'set-hook -g [a-z-]+\[[0-9]+\]' -- "$@" 2>/dev/null | cut -d' ' -f3 | sort -u; }

unhook_running_server() {  # unhook_running_server FILE...: unset the hooks those files set
  local hook
  while IFS= read -r hook; do
    tmux set-hook -gu "$hook" 2>/dev/null || true
  done < <(hook_names "$@")
}

install_tmux_hooks() {
  local conf block old mesh line
  conf=$(tmux_conf_path) block=$(scratch_file) old=$(scratch_file)
  mesh=$(tmux_quote "$MESH_LINK")
  {
    printf '%s\n' "$TMUX_BEGIN"
    while IFS= read -r line || [[ -n $line ]]; do
      [[ $line == '#'* ]] || line=${line//@MESH@/$mesh}   # comments may name the placeholder
      printf '%s\n' "$line"
    done <"$REPO_DIR/hooks/meshd.tmux.conf"
    printf '%s\n' "$TMUX_END"
  } >"$block"
  # Remember the hooks of the block being replaced, to drop any the new block no longer sets.
  [[ ! -f $conf ]] || awk -v b="$TMUX_BEGIN" -v e="$TMUX_END" \
    '$0==b{p=1} p{print} $0==e{p=0}' "$conf" >"$old"
  mkdir -p -- "$(dirname -- "$conf")"
  if write_with_block "$conf" "$TMUX_BEGIN" "$TMUX_END" "$block"; then
    did "wrote the tmux hooks (index $HOOK_INDEX) into $conf"
  else
    did "tmux hooks in $conf already up to date"
  fi
  if tmux_running; then
    unhook_running_server "$old"
    if tmux source-file -- "$block"; then
      did "loaded the hooks into the running tmux server"
    else
      warn "could not load the hooks into the running tmux server; run: tmux source-file '$conf'"
    fi
  fi
}

render_unit() {  # render_unit SRC DEST: replace @MESHD@ / @MESH@; write only on change
  local src=$1 dest=$2 new line meshd mesh
  new=$(scratch_file)
  meshd=$(systemd_quote "$VENV/bin/meshd") mesh=$(systemd_quote "$VENV/bin/mesh")
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line//@MESHD@/$meshd}
    printf '%s\n' "${line//@MESH@/$mesh}"
  done <"$src" >"$new"
  cmp -s -- "$new" "$dest" 2>/dev/null || cat -- "$new" >"$dest"
}

user_systemd_running() {
  command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1
}

cron_block_update() {  # cron_block_update [BLOCK_FILE]: set or (no argument) remove the block
  local current
  command -v crontab >/dev/null 2>&1 || return 1
  current=$(scratch_file)
  crontab -l >"$current" 2>/dev/null || : >"$current"  # "no crontab for user" is empty
  if [[ -z ${1:-} ]] && ! has_block "$current" "$CRON_BEGIN"; then return 0; fi
  if write_with_block "$current" "$CRON_BEGIN" "$CRON_END" "${1:-}"; then
    crontab "$current"
  fi
}

start_now() {  # start (or restart, after an upgrade) the daemon without systemd
  local mesh="$VENV/bin/mesh"
  "$mesh" down >/dev/null 2>&1 || true
  if "$mesh" up; then did "started meshd (mesh up)"
  else warn "'mesh up' failed; see 'mesh doctor'"; fi
}

install_service() {
  local unit block mesh
  mkdir -p -- "$UNIT_DIR"
  for unit in "${UNITS[@]}"; do render_unit "$REPO_DIR/systemd/$unit" "$UNIT_DIR/$unit"; done
  did "wrote the systemd user units ${UNITS[*]} into $UNIT_DIR"
  if user_systemd_running; then
    enable_units
    return
  fi
  if command -v crontab >/dev/null 2>&1; then
    mesh=$(cron_quote "$VENV/bin/mesh") block=$(scratch_file)
    {
      printf '%s\n' "$CRON_BEGIN" '# meshd without systemd: remove with ./install.sh --uninstall'
      printf '%s\n' "*/5 * * * * $mesh resync >/dev/null 2>&1" "@reboot $mesh up >/dev/null 2>&1"
      printf '%s\n' "$CRON_END"
    } >"$block"
    if cron_block_update "$block"; then
      did "no user systemd: crontab block in place (resync every 5 min, mesh up at boot)"
    else
      warn "could not update the crontab; add 'mesh resync' every 5 minutes by hand"
    fi
  else
    warn "neither a user systemd nor crontab is available: nothing restarts meshd after a" \
      "reboot or resyncs every 5 minutes; run 'mesh up' after each login"
  fi
  if no_start; then did "did not start meshd (MESHD_INSTALL_NO_START)"; else start_now; fi
}

enable_units() {
  cron_block_update || true   # drop an earlier cron fallback, which would now resync twice
  if ! systemctl --user daemon-reload ||
    ! systemctl --user enable meshd.service meshd-resync.timer; then
    warn "systemctl --user could not enable the units; see: systemctl --user status meshd"
    return
  fi
  if no_start; then
    did "enabled meshd.service and meshd-resync.timer (not started: MESHD_INSTALL_NO_START)"
  elif systemctl --user restart meshd.service && systemctl --user start meshd-resync.timer; then
    did "enabled and (re)started meshd.service and meshd-resync.timer"   # restart: new venv
  else
    warn "meshd.service did not start; see: journalctl --user -u meshd"
  fi
}

do_install() {
  [[ $HOME == /* ]] || die "HOME must be an absolute path (is '$HOME')"
  [[ $HOME != *$'\n'* ]] || die "HOME must not contain a newline"
  check_prerequisites
  install_venv
  link_programs
  init_state_dir
  install_tmux_hooks
  install_service
  print_summary "installed"
  cat <<EOF

Next steps:
  mesh doctor     check the installation, tmux, SSH and peers
  mesh demo       watch two agents talk in a throwaway tmux session
  add peers:      one SSH alias per line in $STATE_HOME/peers.conf
EOF
}

# --- uninstall -----------------------------------------------------------------------------

links_into_venv() { [[ -L $1 && $(readlink -- "$1") == "$VENV/"* ]]; }

uninstall_service() {
  local unit removed=0
  if user_systemd_running; then
    systemctl --user disable --now meshd.service meshd-resync.timer >/dev/null 2>&1 || true
  fi
  for unit in "${UNITS[@]}"; do
    if [[ -e $UNIT_DIR/$unit ]]; then rm -f -- "$UNIT_DIR/$unit"; removed=1; fi
  done
  if ((removed)); then
    did "removed the systemd user units from $UNIT_DIR"
    if user_systemd_running; then systemctl --user daemon-reload || true; fi
  fi
  local current
  current=$(scratch_file)
  if command -v crontab >/dev/null 2>&1 && crontab -l >"$current" 2>/dev/null &&
    has_block "$current" "$CRON_BEGIN"; then
    if cron_block_update; then did "removed the meshd crontab block"
    else warn "could not remove the meshd block from the crontab; see: crontab -l"; fi
  fi
}

uninstall_tmux_hooks() {
  local conf blocks
  blocks=$(scratch_file)
  while IFS= read -r conf; do
    has_block "$conf" "$TMUX_BEGIN" || continue
    awk -v b="$TMUX_BEGIN" -v e="$TMUX_END" '$0==b{p=1} p{print} $0==e{p=0}' "$conf" >>"$blocks"
    write_with_block "$conf" "$TMUX_BEGIN" "$TMUX_END" || true
    # An empty file would still hide an XDG tmux.conf from tmux; it holds nothing to keep.
    [[ -s $conf || -L $conf ]] || rm -f -- "$conf"
    did "removed the tmux hooks from $conf"
  done < <(tmux_conf_candidates | sort -u)
  if tmux_running; then
    unhook_running_server "$blocks" "$REPO_DIR/hooks/meshd.tmux.conf"
    did "unset meshd's hooks (index $HOOK_INDEX) in the running tmux server"
  fi
}

uninstall_programs() {
  local program link removed=()
  for program in "${PROGRAMS[@]}"; do
    link="$BIN_DIR/$program"
    if links_into_venv "$link"; then
      rm -f -- "$link"
      removed+=("$program")
      if [[ -e $link.pre-meshd ]]; then
        mv -- "$link.pre-meshd" "$link"
        did "restored $link from $link.pre-meshd"
      fi
    elif [[ -e $link || -L $link ]]; then
      warn "left $link alone: it does not point into $VENV"
    fi
  done
  ((${#removed[@]} == 0)) || did "removed the links ${removed[*]} from $BIN_DIR"
  if [[ -e $VENV ]]; then
    rm -rf -- "$VENV"
    did "removed the virtualenv $VENV"
  fi
  rmdir -- "$DATA_DIR" 2>/dev/null || true
}

purge_state() {
  local dir
  for dir in "$STATE_HOME" "$INBOX"; do
    case $dir in
      / | "$HOME" | "$HOME/") die "refusing to purge '$dir'" ;;
    esac
    if [[ -e $dir ]]; then
      rm -rf -- "$dir"
      did "deleted $dir"
    fi
  done
}

do_uninstall() {
  local purge=$1 mesh="$VENV/bin/mesh"
  if [[ -x $mesh ]]; then
    if command -v timeout >/dev/null 2>&1; then
      timeout 20 "$mesh" down >/dev/null 2>&1 || true
    else
      "$mesh" down >/dev/null 2>&1 || true
    fi
  fi
  uninstall_service
  uninstall_tmux_hooks
  uninstall_programs
  if ((purge)); then
    purge_state
  else
    did "kept $STATE_HOME and $INBOX (delete them with --uninstall --purge)"
  fi
  print_summary "uninstalled"
}

print_summary() {
  printf '\nmeshd %s:\n' "$1"
  if ((${#DONE[@]})); then printf '  - %s\n' "${DONE[@]}"; else printf '  (nothing to do)\n'; fi
  if ((${#WARNINGS[@]})); then
    printf '\nWarnings:\n'
    printf '  - %s\n' "${WARNINGS[@]}"
  fi
}

# --- dedicated peer key ------------------------------------------------------------------

readonly PEER_KEY="$HOME/.ssh/meshd_ed25519"

restricted_line() {  # $1 = public key line
  local cmd="$BIN_DIR/meshd link"
  printf 'restrict,command="%s" %s\n' "${cmd//\"/\\\"}" "$1"
}

do_peer_key() {
  command -v ssh-keygen >/dev/null || die "ssh-keygen not found: sudo apt-get install -y openssh-client"
  mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh"
  if [[ ! -f $PEER_KEY ]]; then
    ssh-keygen -q -t ed25519 -N '' -C "meshd@$(hostname -s)" -f "$PEER_KEY"
    say "created $PEER_KEY"
  fi
  local conf="$STATE_HOME/config.toml"
  if [[ -f $conf ]] && ! grep -q '^identity_file' "$conf"; then
    "$VENV/bin/mesh" config set links.identity_file "$PEER_KEY" >/dev/null 2>&1 ||
      warn "could not set links.identity_file in $conf; set it to $PEER_KEY"
  fi
  say "on each peer, run:  ./install.sh --authorize=FILE  with FILE holding this line:"
  cat "$PEER_KEY.pub"
  say "or append this to the peer's ~/.ssh/authorized_keys:"
  restricted_line "$(cat "$PEER_KEY.pub")"
}

do_authorize() {  # $1 = file with one public key line
  [[ -r $1 ]] || die "cannot read public key file $1"
  local key line auth="$HOME/.ssh/authorized_keys"
  key=$(grep -m1 -E '^(ssh-|ecdsa-|sk-)' "$1") || die "$1 holds no SSH public key"
  line=$(restricted_line "$key")
  mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh"
  touch "$auth" && chmod 600 "$auth"
  local blob=${key#* }; blob=${blob%% *}
  if grep -qF "$blob" "$auth"; then
    say "that key is already in $auth (left as it is)"
    return
  fi
  printf '%s\n' "$line" >>"$auth"
  say "authorized the meshd key from $1, restricted to 'meshd link'"
}

main() {
  local uninstall=0 purge=0 peer_key=0 authorize='' arg
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/meshd-install.XXXXXX")
  for arg in "$@"; do
    case $arg in
      --uninstall) uninstall=1 ;;
      --purge) purge=1 ;;
      --peer-key) peer_key=1 ;;
      --authorize=*) authorize=${arg#--authorize=} ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; printf '\nmeshd: error: unknown argument: %s\n' "$arg" >&2; exit 2 ;;
    esac
  done
  if ((purge && !uninstall)); then
    usage >&2
    printf '\nmeshd: error: --purge only goes with --uninstall\n' >&2
    exit 2
  fi
  if [[ -n $authorize ]]; then do_authorize "$authorize"; exit 0; fi
  if ((peer_key)); then do_peer_key; exit 0; fi
  if ((uninstall)); then do_uninstall "$purge"; else do_install; fi
}

main "$@"
