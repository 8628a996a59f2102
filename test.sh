#!/usr/bin/env bash
# The whole test suite: unit tests, BuildKit's data-driven parser and shell cases (read in
# place from ../shared/testdata), property tests and the end-to-end CLI tests.
#
# First, the tools the end-to-end tests run (.ci/tools.txt): when one is missing, root
# installs them all (.ci/install.sh); anyone else is told what to run, and the tests that
# need them skip with a message (or fail, with CI set). `./test.sh --check-tools` does
# only that step.
set -euo pipefail
cd "$(dirname "$0")"
missing=()
while read -r cmd pkg; do
  case "$cmd" in '' | '#'*) continue ;; esac
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$cmd ($pkg)")
done < .ci/tools.txt
if [ ${#missing[@]} -gt 0 ]; then
  list=$(printf '%s, ' "${missing[@]}")
  if [ "$(id -u)" = 0 ]; then
    echo "test.sh: missing ${list%, }: running .ci/install.sh" >&2
    bash .ci/install.sh
  else
    echo "test.sh: missing ${list%, }: install them as root with \`sudo bash .ci/install.sh\`; the tests that need them skip until then" >&2
  fi
fi
if [ "${1:-}" = "--check-tools" ]; then
  exit 0
fi
cargo test --workspace "$@"
