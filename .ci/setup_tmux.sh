#!/bin/bash
# tmux, the real terminal tests/test_top.py runs `python -m minipar.top` in. Idempotent.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
command -v tmux >/dev/null || apt_install tmux
