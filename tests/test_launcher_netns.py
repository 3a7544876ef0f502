"""Controller, engines and client on different "hosts": Linux network namespaces.

Topology (all made here, all removed afterwards)::

    mpl<pid>sw: bridge br0
      |-- mpl<pid>ctl  10.231.7.1  controller --ip 10.231.7.1
      |-- mpl<pid>e1   10.231.7.2  engine --file <copy of the engine file>
      |-- mpl<pid>e2   10.231.7.3  engine --file <another copy>
      +-- mpl<pid>cli  10.231.7.4  client, with a copy of the client file

Network safety: the root namespace's default route leads off the machine, so before any
namespace exists an ``unreachable`` route for 10.231.7.0/24 makes a slip from the root
namespace fail at once; every process that uses the network runs inside a namespace
(``ip netns exec``). Skips only where namespaces cannot be created (no root, no
CAP_NET_ADMIN, no iproute2), and says so.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from minipar import protocol

from .helpers import wait_until
from .test_launcher import CTL_ARGS, ROOT, Pids

TIMEOUT = 180
pytestmark = pytest.mark.timeout(TIMEOUT)

SUBNET = "10.231.7"
PREFIX = f"mpl{os.getpid() % 100000}"
HOSTS = {"ctl": 1, "e1": 2, "e2": 3, "cli": 4}


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          stdin=subprocess.DEVNULL)


def _can_make_namespaces():
    if not shutil.which("ip"):
        return "iproute2's `ip` is not installed (run .ci/setup_netns.sh)"
    probe = f"{PREFIX}probe"
    r = ip("netns", "add", probe, check=False)
    if r.returncode:
        return f"cannot create network namespaces here: {r.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


_why_not = _can_make_namespaces()


@pytest.fixture
def hosts():
    """Four namespaces on one bridge; torn down (processes, namespaces, route) after."""
    if _why_not:
        pytest.skip(_why_not)
    names = {h: f"{PREFIX}{h}" for h in HOSTS}
    sw = f"{PREFIX}sw"
    made = []
    try:
        ip("route", "replace", "unreachable", f"{SUBNET}.0/24")  # before any namespace
        ip("netns", "add", sw)
        made.append(sw)
        ip("-n", sw, "link", "add", "br0", "type", "bridge")
        ip("-n", sw, "link", "set", "br0", "up")
        for i, (host, ns) in enumerate(names.items()):
            ip("netns", "add", ns)
            made.append(ns)
            ip("link", "add", f"{PREFIX}v{i}", "netns", ns, "type", "veth",
               "peer", "name", f"{PREFIX}p{i}", "netns", sw)
            ip("-n", sw, "link", "set", f"{PREFIX}p{i}", "master", "br0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", f"{PREFIX}v{i}", "name", "eth0")
            ip("-n", ns, "addr", "add", f"{SUBNET}.{HOSTS[host]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        yield names
    finally:
        for ns in made:
            r = ip("netns", "pids", ns, check=False)
            for pid in r.stdout.split():  # only ours can be in namespaces made here
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for ns in made:
            ip("netns", "del", ns, check=False)
        ip("route", "del", "unreachable", f"{SUBNET}.0/24", check=False)


CLIENT = textwrap.dedent("""
    import json, subprocess, sys
    import minipar
    rc = minipar.Client(url_file=sys.argv[1], timeout=60)
    rc.wait_for_engines(2, timeout=60)
    def where():
        import os, subprocess
        out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
                             capture_output=True, text=True).stdout
        return os.getpid(), out.split()[3].split("/")[0]
    print(json.dumps({"ids": rc.ids, "where": rc[:].apply_sync(where),
                      "sum": sum(rc[:].map_sync(lambda x: x * x, range(10)))}), flush=True)
    rc.close()
""")


def test_controller_engines_and_client_on_separate_hosts(hosts, tmp_path):
    pids = Pids()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = []

    def run_in(host, args, name):
        out = open(tmp_path / f"{name}.log", "wb")
        p = subprocess.Popen(["ip", "netns", "exec", hosts[host], *args], stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        procs.append(p)
        pids.add(p.pid)  # `ip netns exec` execs the command: this is its pid
        return p

    def output(name):
        return (tmp_path / f"{name}.log").read_text(errors="replace")

    try:
        prof = tmp_path / "controller-host"
        ctl_ip = f"{SUBNET}.{HOSTS['ctl']}"
        ctl = run_in("ctl", [sys.executable, "-m", "minipar.controller", "--ip", ctl_ip,
                             "--profile-dir", str(prof), *CTL_ARGS], "controller")
        engine_file = prof / "security" / "minipar-engine.json"

        def started():
            assert ctl.poll() is None, output("controller")
            return engine_file.exists()

        wait_until(started, 60, "the controller's engine file")
        info = json.loads(engine_file.read_text())
        assert info["ip"] == ctl_ip and info["location"] == ctl_ip
        for host in ("e1", "e2"):  # each "host" gets its own copy of the engine file
            copy = tmp_path / host / "minipar-engine.json"
            copy.parent.mkdir()
            shutil.copy(engine_file, copy)
            run_in(host, [sys.executable, "-m", "minipar.engine", "--file", str(copy)], host)
        client_copy = tmp_path / "cli" / "minipar-client.json"
        client_copy.parent.mkdir()
        shutil.copy(prof / "security" / "minipar-client.json", client_copy)
        client = run_in("cli", [sys.executable, "-c", CLIENT, str(client_copy)], "client")
        assert client.wait(120) == 0, output("client") + output("controller") + output("e1")
        result = json.loads(output("client").strip().splitlines()[-1])
        assert sorted(result["ids"]) == [0, 1]
        addresses = sorted(addr for _pid, addr in result["where"])
        assert addresses == [f"{SUBNET}.{HOSTS['e1']}", f"{SUBNET}.{HOSTS['e2']}"]
        assert result["sum"] == sum(x * x for x in range(10))
    finally:
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            p.terminate()
        for p in alive:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    assert not [p for p in pids.pids if protocol.pid_alive(p)]
