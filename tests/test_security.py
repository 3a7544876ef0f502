"""Keys and exposure: private files, loopback by default, wrong keys refused, CurveZMQ.

A client or engine holding the wrong key is refused by the controller with an unsigned
notice and a log line; the client raises at once (not after its timeout) and the engine
exits with an error naming the key. With ``--curve`` every connection is encrypted: a
TCP relay placed between a client and the controller sees the pushed bytes in clear
without it and never with it.
"""

import json
import logging
import os
import re
import socket
import stat
import threading

import pytest

import minipar
from minipar import errors, protocol

from .conftest import START_TIMEOUT_S, LocalCluster
from .helpers import wait_until

TIMEOUT = 120
pytestmark = pytest.mark.timeout(TIMEOUT)

MARKER = b"minipar-plaintext-marker-" * 8


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _with_key(path, dest, key):
    """A copy of connection file `path` at `dest` holding another key."""
    with open(path) as f:
        info = json.load(f)
    info["key"] = key
    protocol.write_connection_file(str(dest), info)
    return str(dest)


@pytest.fixture
def curve_cluster(tmp_path):
    c = LocalCluster(tmp_path, controller_args=["--curve"])
    try:
        yield c
    finally:
        c.stop()


# ------------------------------------------------------------------ files and interfaces

def test_connection_files_and_their_folder_are_private(curve_cluster):
    c = curve_cluster
    sec = os.path.dirname(c.client_file)
    assert _mode(sec) == 0o700
    for name in (protocol.CLIENT_FILE, protocol.ENGINE_FILE, "minipar-curve.json"):
        assert _mode(os.path.join(sec, name)) == 0o600, name
    # the files give the server's public key only; its secret stays in the controller's file
    with open(c.client_file) as f:
        info = json.load(f)
    with open(os.path.join(sec, "minipar-curve.json")) as f:
        secret = json.load(f)["secret"]
    assert info["curve_serverkey"] and secret not in json.dumps(info)


def test_a_connection_file_others_can_read_is_used_with_a_warning(local_cluster):
    local_cluster.start_engines(1)
    os.chmod(local_cluster.client_file, 0o644)   # copied without its mode, say
    with pytest.warns(RuntimeWarning, match=r"minipar-client.json is readable .* by group or "
                                            r"others \(mode 0644\).*key that signs messages"
                                            r".*chmod 600"):
        rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    assert rc[:].apply_sync(os.getpid) == [local_cluster.engines[0].pid]


def test_an_engine_logs_a_group_readable_connection_file_in_its_log_format(local_cluster):
    """An engine's warning about a connection file others may read came in Python's
    warnings format, with a line of minipar's source after it, amid the engine's log."""
    os.chmod(local_cluster.engine_file, 0o640)
    local_cluster.start_engines(1)
    local_cluster.client().wait_for_engines(1, START_TIMEOUT_S)
    out = local_cluster.output("engine0")
    assert re.search(r"engine\[\d+\] WARNING connection file \S+minipar-engine.json is "
                     r"readable or writable by group or others \(mode 0640\)", out), out
    assert "RuntimeWarning" not in out and "warnings.warn" not in out, out


def _listening(port):
    """Local addresses listening on TCP `port`, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:   # 0A: LISTEN
                found.append(addr)
    return found


def test_controller_listens_on_loopback_only_by_default(local_cluster):
    with open(local_cluster.client_file) as f:
        info = json.load(f)
    assert info["ip"] == "127.0.0.1" and info["location"] == "127.0.0.1"
    for name, port in info["ports"].items():
        addrs = _listening(port)
        assert addrs == ["0100007F"], (name, port, addrs)   # 127.0.0.1, little-endian hex


@pytest.mark.parametrize("args, every, warned", [
    (["--ip", "0.0.0.0"], True, True), (["--ip", "*", "--curve"], True, False), ([], False, False)])
def test_a_controller_on_every_interface_says_so_and_without_curve_that_it_is_readable(
        tmp_path, args, every, warned):
    """``--ip 0.0.0.0`` (or '*') opts in to be reached from other machines, and the
    controller said nothing of it: its ready line now says it listens on every interface
    and, without --curve, a warning says that messages are signed but not encrypted and
    to use --curve on a network you do not trust. On loopback (the default) neither."""
    c = LocalCluster(tmp_path, controller_args=args)
    try:
        wait_until(lambda: "controller ready" in c.output("controller"), START_TIMEOUT_S,
                   "the controller's ready line")
        out = c.output("controller")
        ready = re.search(r"controller ready: tcp://\S+( \(listening on every interface\))?; "
                          r"connection files in ", out)
        assert ready and bool(ready.group(1)) == every, out
        assert ("WARNING listening on every interface without --curve: messages are signed but "
                "not encrypted" in out and "restart with --curve" in out) == warned, out
    finally:
        c.stop()


# ------------------------------------------------------------------ wrong keys

def test_client_with_the_wrong_key_is_refused_at_once(local_cluster, tmp_path, caplog):
    bad = _with_key(local_cluster.client_file, tmp_path / "bad-client.json", os.urandom(32).hex())
    caplog.set_level(logging.ERROR, logger="minipar.client")
    # a long timeout: the refusal, not the timeout, must end the wait
    with pytest.raises(errors.MiniparError, match="refused.*key.*does not match") as e:
        minipar.Client(bad, timeout=START_TIMEOUT_S * 2)
    assert not isinstance(e.value, TimeoutError)
    assert any("refused" in r.getMessage() for r in caplog.records)
    assert "refused a message on the client socket: bad signature" in \
        local_cluster.output("controller")
    # the right key still works
    rc = local_cluster.client()
    assert rc.ids == []


def test_engine_with_the_wrong_key_exits_with_a_clear_error(local_cluster, tmp_path):
    bad = _with_key(local_cluster.engine_file, tmp_path / "bad-engine.json", os.urandom(32).hex())
    p = local_cluster._spawn("engine", ["--file", bad], name="bad-engine")
    assert p.wait(START_TIMEOUT_S) == 1
    out = local_cluster.output("bad-engine")
    assert "refused registration" in out and "key in the connection file does not match" in out
    assert "refused a message on the engine socket: bad signature" in \
        local_cluster.output("controller")
    local_cluster.start_engines(1)   # the right key still works
    local_cluster.client().wait_for_engines(1, START_TIMEOUT_S)


def test_a_connection_file_with_another_signature_scheme_is_refused_naming_it(local_cluster,
                                                                              tmp_path):
    """minipar signs with hmac-sha256 alone; a file naming another scheme (ipyparallel
    takes any hmac-<hashlib name>) was read and the scheme ignored, signing with sha256."""
    def with_scheme(path, name, scheme):
        with open(path) as f:
            info = json.load(f)
        protocol.write_connection_file(str(tmp_path / name), {**info, "signature_scheme": scheme})
        return str(tmp_path / name)

    bad = with_scheme(local_cluster.client_file, "md5-client.json", "hmac-md5")
    with pytest.raises(errors.ConnectionFileError,
                       match=r"`signature_scheme` 'hmac-md5': minipar signs with hmac-sha256 only"):
        minipar.Client(bad, timeout=START_TIMEOUT_S)
    bad = with_scheme(local_cluster.engine_file, "odd-engine.json", "nonsense")
    p = local_cluster._spawn("engine", ["--file", bad], name="bad-engine")
    assert p.wait(START_TIMEOUT_S) == 1
    assert "`signature_scheme` 'nonsense': minipar signs with hmac-sha256 only" in \
        local_cluster.output("bad-engine")
    rc = local_cluster.client()   # the controller's own file, unchanged, still works
    assert rc.ids == []


# ------------------------------------------------------------------ CurveZMQ

class Relay:
    """A TCP relay that keeps a copy of every byte it passes, to see what is on the wire."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._socks = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.target)
            self._socks += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.seen += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def saw(self, data):
        with self._lock:
            return data in self.seen

    def close(self):
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass


def _push_through_relay(cluster, tmp_path):
    """Push MARKER to an engine with a client whose client-socket traffic goes through a
    Relay; returns the relay."""
    with open(cluster.client_file) as f:
        info = json.load(f)
    relay = Relay(info["ports"]["client"])
    info["ports"]["client"] = relay.port
    path = str(tmp_path / "relayed-client.json")
    protocol.write_connection_file(path, info)
    cluster.start_engines(1)
    rc = minipar.Client(path, timeout=START_TIMEOUT_S)
    cluster.clients.append(rc)
    try:
        rc.wait_for_engines(1, START_TIMEOUT_S)
        rc[0].push({"secret": MARKER}, block=True)
        assert rc[0].pull("secret", block=True) == MARKER
    finally:
        relay.close()
    return relay


@pytest.mark.skipif(not __import__("zmq").has("curve"), reason="libzmq without CurveZMQ")
def test_curve_encrypts_everything_a_relay_can_see(curve_cluster, tmp_path):
    relay = _push_through_relay(curve_cluster, tmp_path)
    assert relay.seen, "the relay saw no traffic at all"
    assert not relay.saw(MARKER) and not relay.saw(b"apply") and not relay.saw(b"push")


def test_without_curve_a_relay_sees_the_data(local_cluster, tmp_path):
    """The control for the test above: the same relay does see plaintext without --curve."""
    relay = _push_through_relay(local_cluster, tmp_path)
    assert relay.saw(MARKER)


@pytest.mark.skipif(not __import__("zmq").has("curve"), reason="libzmq without CurveZMQ")
def test_a_plaintext_client_cannot_talk_to_a_curve_controller(curve_cluster, tmp_path):
    with open(curve_cluster.client_file) as f:
        info = json.load(f)
    del info["curve_serverkey"]
    path = str(tmp_path / "plain-client.json")
    protocol.write_connection_file(path, info)
    with pytest.raises(TimeoutError, match="did not answer"):
        minipar.Client(path, timeout=2)
    curve_cluster.start_engines(2)
    rc = curve_cluster.client()
    rc.wait_for_engines(2, START_TIMEOUT_S)
    assert rc.load_balanced_view().map_sync(lambda x: -x, range(20)) == [-x for x in range(20)]
