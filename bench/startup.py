"""Time from `Cluster(n=N)` to ready (all N engines registered) (issues 5 and 7).

    python bench/startup.py [-n N] [--quick]

For minipar and ipyparallel (when importable): construct the Cluster, start it, connect
a client and wait until N engines are registered; then stop it. The multiprocessing column
is `Pool(N)` until a first `apply` returns. Issue 5 asks for N=2 and N=50.
"""
import _common


def main():
    args = _common.parse_args(__doc__, n_option=True)
    # a 2-core machine starts 50 engines slowly; bound the wait by the count
    cfg = _common.Config.make(quick=args.quick, n=args.n,
                              timeout_s=max(60.0, 4.0 * args.n))
    _common.run_and_print(cfg, ["startup_s"], f"startup: Cluster(n={args.n}) to ready")


if __name__ == "__main__":
    main()
