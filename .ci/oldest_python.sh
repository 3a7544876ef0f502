#!/usr/bin/env bash
# A smoke run of core test files under the oldest Python minipar supports (3.9, as
# pyproject's requires-python says). Debian bookworm has only 3.11, so bullseye's
# python3.9 packages are fetched with apt into a folder and unpacked there, not installed:
# the machine's own packages and apt lists stay as they were. pip (the machine's, with
# --python) installs minipar and the test tools into a venv on that Python.
# A fetch that fails is reported loudly and skips the run; a test that fails fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
dir=$MINIPAR_CI_DIR/python3.9
root=$dir/root
export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu   # its libssl1.1, libffi7, libmpdec3
if [ ! -f "$dir/.unpacked" ]; then
  rm -rf "$dir" && mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/debs"
  echo "deb http://deb.debian.org/debian bullseye main" > "$dir/bullseye.list"
  apt=(-o "Dir::Etc::sourcelist=$dir/bullseye.list" -o Dir::Etc::sourceparts=-
       -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache")
  if ! { apt-get "${apt[@]}" update -q >/dev/null &&
         (cd "$dir/debs" && apt-get "${apt[@]}" download -q python3.9-minimal \
            libpython3.9-minimal libpython3.9-stdlib python3.9 \
            python3-distutils/bullseye python3-lib2to3/bullseye libssl1.1 libffi7 \
            libmpdec3 >/dev/null 2>&1); }; then
    echo "WARNING: could not fetch Debian bullseye's python3.9: the Python 3.9 smoke run skips"
    exit 0
  fi
  for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$root"; done
  "$root/usr/bin/python3.9" -m venv --without-pip "$dir/venv"
  touch "$dir/.unpacked"
fi
# minipar itself too, each time: pip checks requires-python, and the build works on 3.9
python -m pip --python "$dir/venv/bin/python" install -q . pytest pytest-timeout numpy
# About a minute on 2 cores; test_tasks.py would add as much again
"$dir/venv/bin/python" -m pytest -p no:cacheprovider -q tests/test_protocol.py \
  tests/test_client.py tests/test_classic.py tests/test_versions.py \
  tests/test_launcher.py::test_find_launcher_class_by_every_name
