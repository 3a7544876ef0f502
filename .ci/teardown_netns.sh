#!/bin/bash
# Remove what an interrupted tests/test_launcher_netns.py may have left: its namespaces
# (their processes first) and its unreachable route.
set -uo pipefail
for ns in $(ip netns list 2>/dev/null | awk '/^mpl[0-9]/{print $1}'); do
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  ip netns del "$ns"
done
ip route del unreachable 10.231.7.0/24 2>/dev/null
true
