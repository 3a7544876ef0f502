"""``python -m minipar``: the package itself runs nothing; it names the commands that do,
where Python said only "No module named minipar.__main__"."""

import shlex
import sys

COMMANDS = """\
minipar is started one role at a time; each command takes --help:

  python -m minipar.controller               start a controller (Ctrl-C stops it)
  python -m minipar.engine                   start an engine of that controller
  python -m minipar.launcher start -n 4      start a controller and 4 engines at once
  python -m minipar.top                      watch a running cluster at work

then, in Python: import minipar; rc = minipar.Client()
"""


def _meant(args):
    """The command that `python -m minipar top --once` (a space for the dot), `python -m
    minipar start -n 4` (the launcher's word) or `python -m minipar -n 4` (ipcluster's)
    most likely meant, or None."""
    if args[0] in ("controller", "engine", "launcher", "top"):
        return f"python -m minipar.{shlex.join(args)}"
    if args[0] in ("start", "engines", "stop", "list", "clean"):
        return f"python -m minipar.launcher {shlex.join(args)}"
    if args[0].partition("=")[0].rstrip("0123456789") in ("-n", "--n"):   # ipcluster's -n 4
        return f"python -m minipar.launcher start {shlex.join(args)}"
    return None


if __name__ == "__main__":
    if sys.argv[1:] in ([], ["-h"], ["--help"]):
        sys.stdout.write(COMMANDS)
    else:
        meant = _meant(sys.argv[1:])
        sys.stderr.write(f"python -m minipar takes no arguments ({' '.join(sys.argv[1:])}): "
                         + (f"did you mean `{meant}`?" if meant else
                            "give them to one of its commands.") + f"\n\n{COMMANDS}")
        sys.exit(2)
