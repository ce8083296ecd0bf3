#!/usr/bin/env bash
# Prints the command the README gives under a heading: the first line of the first ```sh block
# after "## HEADING". CI runs exactly what this prints, so the README's lines cannot rot.
#   usage: scripts/readme-command.sh "Try it"   |   scripts/readme-command.sh "Run the tests"
set -euo pipefail
heading=$1
awk -v h="## $heading" '
    index($0, h) == 1 { found = 1; next }
    found && /^## / { exit 1 }
    found && /^```sh$/ { inblock = 1; next }
    inblock { print; exit 0 }
' "$(dirname "$0")/../README.md" | grep . || {
    echo "readme-command.sh: README.md has no sh block under \"## $heading\"" >&2
    exit 1
}
