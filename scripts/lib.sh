# Shared by scripts/*: install the Debian packages a step needs when they are missing.
# Arguments are command names; a command whose package is named differently is mapped below.
package_of() {
  case "$1" in
    promtool) echo prometheus ;;
    *) echo "$1" ;;
  esac
}

need_packages() {
  local missing=()
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$(package_of "$cmd")")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing ${missing[*]} (Pingora's build needs cmake; the tests need memcached, promtool, chromium)"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" build-essential >/dev/null
}
