#!/usr/bin/env bash
# Stop the daemons setup_infra.sh started (by their pid files).
cd "$(dirname "$0")"
for part in netns sge slurm ssh pbs mpi; do
  [ -f "teardown_$part.sh" ] && bash "teardown_$part.sh" >/dev/null 2>&1
done
true
