#!/bin/bash
# OpenMPI's mpiexec for tests/test_launcher_systems.py, and mpi4py for its test that runs MPI
# code on the engines (ipyparallel's psum tutorial). Idempotent. Tests running as root set
# OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 themselves (in the launcher's env).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
command -v mpiexec >/dev/null || apt_install openmpi-bin
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpiexec --oversubscribe -n 2 true </dev/null
echo "mpiexec ready: $(command -v mpiexec)"
# mpi4py's binary wheel (1.3 MB, ~2 s) loads the libmpi that openmpi-bin installed; only
# a Python it has no wheel for builds it from source, which needs OpenMPI's headers
if ! python -m pip install -q --only-binary=:all: mpi4py; then
  apt_install libopenmpi-dev
  python -m pip install -q mpi4py
fi
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpiexec --oversubscribe -n 2 \
  python -c "from mpi4py import MPI; assert MPI.COMM_WORLD.allreduce(1) == 2" </dev/null
echo "mpi4py ready: $(python -c 'import mpi4py; print(mpi4py.__version__)')"
