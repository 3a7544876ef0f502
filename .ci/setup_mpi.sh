#!/bin/bash
# OpenMPI's mpiexec for tests/test_launcher_mpi.py. Idempotent. Tests running as root set
# OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 themselves (in the launcher's env).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
command -v mpiexec >/dev/null || apt_install openmpi-bin
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpiexec --oversubscribe -n 2 true </dev/null
echo "mpiexec ready: $(command -v mpiexec)"
