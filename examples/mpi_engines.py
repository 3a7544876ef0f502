"""Engines started by ``mpiexec``: ``Cluster(engines="mpi")``.

The controller runs as usual; the engines are the ranks of one ``mpiexec -n 4`` run, and
engine i is MPI rank i, as in ipyparallel (each also has its rank in the engine property
``mpi_rank`` and the usual environment variables). Code on the engines can then use MPI as any MPI program does
(with mpi4py: ``from mpi4py import MPI; MPI.COMM_WORLD``) while the client drives them
interactively. Here each rank integrates its slice of 4 / (1 + x^2) over [0, 1], the
classic MPI pi example, and the client adds the slices.

Skips with a message (and exit status 0) when mpiexec is missing or cannot run here:
OpenMPI refuses to run as root unless OMPI_ALLOW_RUN_AS_ROOT=1 and
OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 are set.

Run it as it is: ``python examples/mpi_engines.py``.
"""

import math
import shutil
import subprocess
import sys

import minipar


def rank_and_size():
    """This engine's MPI rank and the number of ranks, from mpiexec's environment."""
    import os

    for rank, size in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                       ("PMI_RANK", "PMI_SIZE"), ("PMIX_RANK", "PMIX_SIZE")):
        if rank in os.environ:
            return int(os.environ[rank]), int(os.environ.get(size, 0))
    return None, None


def integrate_slice(n):
    """This rank's share of the midpoint rule for the integral of 4 / (1 + x^2)."""
    rank, size = rank_and_size()
    h = 1.0 / n
    return h * sum(4.0 / (1.0 + ((i + 0.5) * h) ** 2) for i in range(rank, n, size))


def mpi_args():
    """Extra mpiexec arguments, or None (with the reason printed) if it cannot run."""
    if shutil.which("mpiexec") is None:
        print("skipped: mpiexec is not installed (Debian/Ubuntu: apt install openmpi-bin)")
        return None
    version = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True,
                             timeout=60)
    # OpenMPI refuses more ranks than cores unless told; MPICH does not know the option
    extra = ["--oversubscribe"] if "Open MPI" in version.stdout + version.stderr or \
        "OpenRTE" in version.stdout + version.stderr else []
    probe = subprocess.run(["mpiexec", *extra, "-n", "1", sys.executable, "-c", "pass"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        print("skipped: mpiexec does not run here:\n" + (probe.stderr or probe.stdout).strip())
        return None
    return extra


def main():
    extra = mpi_args()
    if extra is None:
        return
    with minipar.Cluster(n=4, engines="mpi", engine_options={"mpi_args": extra}) as rc:
        dv = rc[:]
        ranks = dv.apply_sync(rank_and_size)
        for eid, (rank, size) in zip(rc.ids, ranks):
            print(f"engine {eid} is MPI rank {rank} of {size}")
        assert [r for r, _ in ranks] == rc.ids   # engine i is rank i
        pi = sum(dv.apply_sync(integrate_slice, 1_000_000))
        print(f"pi ~ {pi:.10f} (error {abs(pi - math.pi):.1e}) from {len(ranks)} ranks")


if __name__ == "__main__":
    main()
