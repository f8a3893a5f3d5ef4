# Sourced by demo.sh and test.sh: create (once) and activate the checkout's own virtual
# environment, .venv, so nothing is installed into the system's Python (Debian refuses that:
# externally-managed-environment) or into another project's environment.
# Debian's python3 lacks ensurepip until python3-venv is installed: done here when root.
venv_setup() {
  local root="$1"
  if [ ! -x "$root/.venv/bin/python" ]; then
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        local v
        v="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
          "python$v-venv" >/dev/null || DEBIAN_FRONTEND=noninteractive \
          apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
      else
        echo "python3 cannot create a virtual environment: install python3-venv" >&2
        exit 2
      fi
    fi
    python3 -m venv "$root/.venv"
  fi
  # the venv's bin first: weightvault, pytest, and binaries pip packages install (weed)
  export VIRTUAL_ENV="$root/.venv"
  export PATH="$root/.venv/bin:$PATH"
  hash -r
}
