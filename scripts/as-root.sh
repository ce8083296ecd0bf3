# Sourced by the README's scripts: they need root (FUSE mounts, private mount namespaces, apt-get).
# Root runs them as they are; anyone else is re-run through sudo when sudo exists (a desktop), so the
# README's bare commands work both on a fresh Debian machine where you are root and has no sudo, and
# on a workstation. Cargo and rustup usually live in the user's home: keep PATH across sudo.
#   usage: . "$here/scripts/as-root.sh" "$0" "$@"
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo --preserve-env env "PATH=$PATH" "$@"
    fi
    echo "$(basename "$1"): needs root (FUSE mounts, private mount namespaces, package installs)" \
        "and sudo is not installed: run it as root" >&2
    exit 1
fi
