"""``python -m minipar``: the package itself runs nothing; it names the commands that do,
where Python said only "No module named minipar.__main__"."""

import sys

COMMANDS = """\
minipar is started one role at a time; each command takes --help:

  python -m minipar.controller               start a controller (Ctrl-C stops it)
  python -m minipar.engine                   start an engine of that controller
  python -m minipar.launcher start -n 4      start a controller and 4 engines at once
  python -m minipar.top                      watch a running cluster at work

then, in Python: import minipar; rc = minipar.Client()
"""

if __name__ == "__main__":
    if sys.argv[1:] in ([], ["-h"], ["--help"]):
        sys.stdout.write(COMMANDS)
    else:
        sys.stderr.write(f"python -m minipar takes no arguments ({' '.join(sys.argv[1:])}): "
                         f"give them to one of its commands.\n\n{COMMANDS}")
        sys.exit(2)
