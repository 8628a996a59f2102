#!/usr/bin/env bash
# The whole test suite: unit tests, BuildKit's data-driven parser and shell cases (read in
# place from ../shared/testdata), property tests and the end-to-end CLI tests.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace "$@"
