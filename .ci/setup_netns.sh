#!/bin/bash
# What tests/test_launcher_netns.py needs: iproute2 and the right to make network
# namespaces (root / CAP_NET_ADMIN). The test makes and removes its own namespaces
# (mpl<pid>*, 10.231.7.0/24, guarded by an `unreachable` route); this only checks. Idempotent.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
command -v ip >/dev/null || apt_install iproute2
ip netns add mplprobe && ip netns del mplprobe
echo "network namespaces available"
