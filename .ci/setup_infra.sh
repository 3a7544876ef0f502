#!/usr/bin/env bash
# Install and start the real programs the launcher tests drive. A part that fails is
# reported loudly; its tests then skip with the reason (they never pass vacuously).
cd "$(dirname "$0")"
for part in netns mpi ssh slurm pbs sge tmux; do  # pbs sits on slurm: after it
  if [ -f "setup_$part.sh" ]; then
    echo "== setting up $part"
    bash "setup_$part.sh" || echo "WARNING: setup_$part.sh failed; the $part launcher tests will skip"
  fi
done
