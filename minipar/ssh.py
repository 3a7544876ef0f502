"""SSH launchers: a controller or engines on other hosts, each through a local ``ssh``.

The launcher contract is launcher.py's; these are LocalProcessLaunchers whose process is
``ssh``. Found by short name ("ssh") through ``launcher.find_launcher_class``.

Map of the module::

    SSHLauncher                      ssh HOST 'python -m <pkg>.X & echo pid; read || kill; wait'
      SSHEngineLauncher              one engine; its engine file already on the host
      SSHControllerLauncher          the controller; its connection files fetched with scp
    SSHEngineSetLauncher             {host: n} of SSHEngineLaunchers; the engine file sent
                                     with scp, or given in the environment

Who talks to whom::

    this process --ssh HOST--> remote shell --> python -m <pkg>.engine|controller
        |  (the local ssh ends when the remote program does: the watcher notices)
        +--a newline on ssh's stdin, once the pid is read: "keep it"; EOF before it
        |  (a Ctrl-C, this process or its ssh killed) has the remote shell kill it
        +--ssh HOST 'kill -SIG pid'--> the remote program (stop / signal)
        +--scp--> engine file to HOST; controller's files from HOST

launcher.py imports nothing from here at import time (it forwards these names on first
use), so this module may import launcher.py at its top.
"""

import contextlib
import json
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time

from . import protocol
from .launcher import (_PKG, BEFORE, RUNNING, START_TIMEOUT_S, ControllerLauncher,
                       ControllerStartError, EngineLauncher, EngineSetLauncher,
                       LauncherError, LocalProcessLauncher, _not_installed, _python_path)

log = logging.getLogger(__name__)

# How long sending the engine file to a host, or the remote pid's line from a started
# program, may take: a few seconds where the host is up, forever behind a dead route when
# the user's ssh has no ConnectTimeout of its own
SEND_TIMEOUT_S = 20.0


def _no_answer(what, cmd, ssh, host, seconds=SEND_TIMEOUT_S, error=LauncherError):
    """The error for a host that said nothing within `seconds`: what to check."""
    return error(
        f"{what}: no answer within {seconds:g} s from {shlex.join(cmd)}; check that "
        f"the host is up and reachable (`{shlex.join([*ssh, host, 'true'])}`), and give "
        "ssh_args=['-o', 'ConnectTimeout=10'] to have ssh say why sooner")


def _ssh_args(args):
    args = [str(a) for a in args]
    if "-n" in args:
        raise ValueError(f"ssh_args {args}: leave out -n; the remote shell reads ssh's stdin "
                         "and ends the program if it closes before the launcher has its pid")
    return args


# ssh's options that take a value (man ssh), and those of all its options that scp takes,
# as scp spells them: -p 22 is scp's -P 22, -S (ssh's control path) scp's program to run;
# the rest (-t, -T, -n, -N, -X, forwardings: a session's, not a copy's) scp refuses or misreads
_SSH_VALUED = "BbcDEeFIiJLlmOoPpQRSWw"
_FOR_SCP = {"4": "-4", "6": "-6", "C": "-C", "q": "-q", "v": "-v", "A": "-oForwardAgent=yes",
            "a": "-oForwardAgent=no", "c": "-c", "F": "-F", "i": "-i", "J": "-J", "o": "-o",
            "p": "-P", "l": "-oUser=", "S": "-oControlPath=", "b": "-oBindAddress=",
            "B": "-oBindInterface=", "m": "-oMACs=", "I": "-oPKCS11Provider="}


def _scp_args(ssh_args):
    """The options of `ssh_args` that scp takes, in scp's spelling: ipyparallel's default
    ssh args, -tt, made the engine file's copy fail (scp's -t is its own server mode)."""
    args, words = [], iter(ssh_args)
    for word in words:
        letters = word[1:] if word.startswith("-") and word != "-" else None
        if letters is None:
            args.append(word)   # not an option: as given
        while letters:
            letter, letters = letters[0], letters[1:]
            scp = _FOR_SCP.get(letter)
            if letter not in _SSH_VALUED:
                args += [scp] if scp else []
                continue
            value, letters = letters or next(words, ""), ""   # -p22 or -p 22
            if scp:
                args += [scp + value] if scp.endswith("=") else [scp, value]
    return args


def _host_specs(engines):
    """{host: (n, [engine args])} from an SSHEngineSetLauncher's `engines`, or a ValueError
    showing the shapes it takes (a list of hosts, or "2" from a JSON string, are not)."""
    def count(n):
        return isinstance(n, int) and not isinstance(n, bool) and n >= 0

    def spec_of(spec):
        if count(spec):
            return spec, []
        if (isinstance(spec, (list, tuple)) and len(spec) == 2 and count(spec[0])
                and isinstance(spec[1], (list, tuple))):
            return spec[0], [str(a) for a in spec[1]]
        return None
    specs = ({host: spec_of(spec) for host, spec in engines.items()}
             if isinstance(engines, dict) else {None: None})
    if None in specs.values():
        raise ValueError(f"engines={engines!r}: give {{host: number of engines}} or "
                         "{host: [n, [engine args]]}, e.g. {'node1': 4, 'node2': "
                         "[2, ['--log-level', 'DEBUG']]}")
    return specs


class SSHLauncher(LocalProcessLauncher):
    """One program on `hostname`, through a local ``ssh`` that lives as long as it does
    (the module's map shows how). Killing the local ssh would leave the program running
    (no tty), so stop() and signal() run ``kill`` on the host instead; a Ctrl-C during
    start() or the death of this process ends it (hence no ``-n`` in `ssh_args`). The
    remote profile dir is created when missing; `remote_python` defaults to this
    interpreter's path (the same installation on every host, or a shared file system).
    """

    kind = "ssh"
    module = ""  # the program: python -m <pkg>.<module>
    stdin = subprocess.PIPE  # closed with no newline: the remote shell kills the program
    _options = ("hostname", "ssh_cmd", "ssh_args", "remote_python", "remote_profile_dir",
                "remote_env")
    _state = ("remote_pid",)

    def __init__(self, hostname="localhost", ssh_cmd=("ssh",), ssh_args=(),
                 remote_python=sys.executable, remote_profile_dir=None, remote_env=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.hostname = hostname
        self.ssh_cmd = [str(a) for a in ssh_cmd]
        self.ssh_args = _ssh_args(ssh_args)
        self.remote_python = remote_python
        self.remote_profile_dir = remote_profile_dir or self.profile_dir
        self.remote_env = dict(remote_env) if remote_env is not None else {
            "PYTHONPATH": _python_path()}
        self.remote_pid = None

    def ssh(self, command):
        return [*self.ssh_cmd, *self.ssh_args, self.hostname, command]

    def remote_args(self):
        return [self.remote_python, "-m", f"{_PKG}.{self.module}", "--profile-dir",
                self.remote_profile_dir, *self.program_args]

    def remote_command(self, prepare=""):
        env = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in self.remote_env.items())
        return (f"{prepare}mkdir -p {shlex.quote(self.remote_profile_dir)}; {env} "
                f"{shlex.join(self.remote_args())} </dev/null & trap '' PIPE; "
                "echo minipar-remote-pid $!; read -r keep || kill $!; wait $!")

    def find_args(self):
        return self.ssh(self.remote_command())

    def _read_remote_pid(self):
        m = re.search(r"minipar-remote-pid (\d+)", self.get_output())
        if m:
            self.remote_pid = int(m.group(1))
        return self.remote_pid

    def start(self):
        LocalProcessLauncher.start(self)
        deadline = time.monotonic() + SEND_TIMEOUT_S  # the pid comes before the program runs
        while (self._read_remote_pid() is None and self.state == RUNNING
               and time.monotonic() < deadline):
            time.sleep(0.05)
        if self.remote_pid is not None:
            self._close_stdin(b"\n")   # keep the program: stop() kills it by its pid now
        else:
            out, silent = self.get_output(), self.state == RUNNING
            self.stop()
            if silent and not out.strip():   # ssh still waiting for the host
                raise _no_answer(f"starting {self.module} on {self.hostname}", self.args,
                                 [*self.ssh_cmd, *self.ssh_args], self.hostname)
            raise LauncherError(f"ssh to {self.hostname} did not start {self.module}; its "
                                f"output:\n{out}")

    def get_output(self, remove=False):
        text = super().get_output(remove)
        if re.search(rf"No module named '|{re.escape(self.remote_python)}: No such file", text):
            # said by the host's shell or Python: what to set here is not in their words
            text += (f"[{_PKG}] {self.remote_python} on {self.hostname} cannot run "
                     f"{_PKG}.{self.module}: give remote_python= a Python there that has "
                     f"{_PKG}, pyzmq and cloudpickle, or remote_env={{'PYTHONPATH': <the folder "
                     f"holding {_PKG} there>}} (now {self.remote_env})\n")
        return text

    def _close_stdin(self, data=b""):
        # once: EOF with no newline before it tells the remote shell to kill the program
        if self.process is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):   # ssh gone already: so is its remote shell
                self.process.stdin.write(data)
                self.process.stdin.flush()
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def remote_kill(self, sig):
        """``kill -SIG pid`` on the host (bounded: ssh's ConnectTimeout and ours)."""
        if self.remote_pid is None:
            return
        cmd = self.ssh(f"kill -{signal.Signals(sig).name[3:]} {self.remote_pid} 2>/dev/null; true")
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=30, env=self._child_env())
        except subprocess.TimeoutExpired:
            log.warning("ssh %s: kill timed out", self.hostname)

    def signal(self, sig):
        self._check_state(RUNNING, "signal")
        self.remote_kill(sig)

    def stop(self):
        if self.state == BEFORE:
            return None
        # a Ctrl-C may have ended start()'s wait for the pid: EOF with no newline has the
        # remote shell kill the program, whether the pid came here meanwhile or not
        self._close_stdin()
        if self.state == RUNNING and self._read_remote_pid() is not None:
            self.remote_kill(signal.SIGTERM)
            if not self.wait(self.stop_timeout):
                log.warning("%s on %s (pid %s) ignored SIGTERM; sending SIGKILL",
                            self.module, self.hostname, self.remote_pid)
                self.remote_kill(signal.SIGKILL)
                self.wait(self.stop_timeout)
        # the local ssh ends with the remote program; terminate_pids is for a stuck one
        return super().stop()


class SSHEngineLauncher(SSHLauncher, EngineLauncher):
    """One engine on a host; `connection_file` is its copy of the engine file there."""

    role = "engine"
    module = "engine"
    _options = ("connection_file",)

    def __init__(self, connection_file=None, **kwargs):
        super().__init__(**kwargs)
        self.connection_file = connection_file

    def remote_args(self):
        extra = ["--file", self.connection_file] if self.connection_file else []
        return [*super().remote_args(), *extra]

    def remote_command(self, prepare=""):
        if self.connection_file and "MINIPAR_CONNECTION_INFO" in self.env:
            # "env" mode: the connection info arrived as an environment variable
            path = shlex.quote(self.connection_file)
            prepare = (f"umask 077; mkdir -p {shlex.quote(os.path.dirname(self.connection_file))}"
                       f" && printf '%s' \"$MINIPAR_CONNECTION_INFO\" > {path} || exit 1; ")
        return super().remote_command(prepare)

    def start(self, n=1):
        self.n = 1
        super().start()


class SSHControllerLauncher(SSHLauncher, ControllerLauncher):
    """The controller on `hostname`; its connection files are fetched back with scp.

    Engines and clients on other hosts need it to listen beyond loopback: pass
    ``controller_args=["--ip", "*"]`` (or the host's address) and maybe ``--location``.
    """

    role = "controller"
    module = "controller"
    _options = ("scp_cmd",)

    def __init__(self, scp_cmd=("scp",), **kwargs):
        super().__init__(**kwargs)
        self.scp_cmd = [str(a) for a in scp_cmd]

    def start(self):
        super().start()
        try:
            self.fetch_connection_files()
        except BaseException:
            self.stop()
            raise

    def fetch_connection_files(self, timeout=START_TIMEOUT_S):
        """Copy the controller's files here once it has written them (its pid inside)."""
        rsec = os.path.join(self.remote_profile_dir, "security")
        lsec = protocol.security_dir(self.profile_dir)
        deadline = time.monotonic() + timeout
        for name in (protocol.CLIENT_FILE, protocol.ENGINE_FILE):
            local = os.path.join(lsec, name)
            tmp = f"{local}.fetch-{secrets.token_hex(3)}"  # never scp onto the file itself
            cmd = [*self.scp_cmd, *_scp_args(self.ssh_args), "-q",
                   f"{self.hostname}:{rsec}/{name}", tmp]
            while True:
                wait_s = round(max(1.0, min(SEND_TIMEOUT_S, deadline - time.monotonic())), 1)
                try:   # each scp bounded: one behind a dead route hangs
                    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                       text=True, timeout=wait_s, env=self._child_env())
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(OSError):   # scp may have begun writing it
                        os.remove(tmp)
                    raise _no_answer(f"fetching {rsec}/{name} from the controller on "
                                     f"{self.hostname}", cmd, [*self.ssh_cmd, *self.ssh_args],
                                     self.hostname, wait_s, ControllerStartError) from None
                except FileNotFoundError:
                    raise ControllerStartError(_not_installed(self, cmd[0])) from None
                with contextlib.suppress(OSError, ValueError):
                    if r.returncode == 0:
                        with open(tmp) as f:
                            if json.load(f).get("pid") == self.remote_pid:
                                os.chmod(tmp, 0o600)
                                os.replace(tmp, local)
                                break
                if self.state != RUNNING or time.monotonic() > deadline:
                    with contextlib.suppress(OSError):   # a copy of a stale file, with its key
                        os.remove(tmp)
                    raise ControllerStartError(
                        f"no {name} from the controller on {self.hostname} "
                        f"({r.stderr.strip()}); its output:\n{self.get_output()}")
                time.sleep(0.2)


class SSHEngineSetLauncher(EngineSetLauncher):
    """Engines on several hosts: ``engines={host: n}`` or ``{host: (n, [engine args])}``.

    The controller's engine file goes to each host before its engines start:
    ``connection="scp"`` copies it to ``<remote_profile_dir>/security/`` under a name of
    its own (so a shared file system never has the original overwritten), ``"env"``
    passes it in the variable MINIPAR_CONNECTION_INFO (the server must AcceptEnv it),
    ``"shared"`` sends nothing (a shared file system). ``start(n)`` with a plain ``n``
    and no `engines` starts n engines on localhost. scp gets those of `ssh_args` it takes,
    in its spelling (``-p 22`` as ``-P 22``; not ``-tt``: see _scp_args).
    """

    kind = "ssh"
    _options = ("engines", "ssh_cmd", "ssh_args", "scp_cmd", "remote_python",
                "remote_profile_dir", "remote_env", "connection")
    _state = ("sent_files",)

    def __init__(self, engines=None, ssh_cmd=("ssh",), ssh_args=(), scp_cmd=("scp",),
                 remote_python=sys.executable, remote_profile_dir=None, remote_env=None,
                 connection="scp", **kwargs):
        super().__init__(**kwargs)
        if connection not in ("scp", "env", "shared"):
            raise ValueError(f"connection must be 'scp', 'env' or 'shared', not {connection!r}")
        self.engines = engines or {}
        self._specs = _host_specs(self.engines)   # refused now, not from inside start()
        self.ssh_cmd, self.scp_cmd = list(ssh_cmd), list(scp_cmd)
        self.ssh_args = _ssh_args(ssh_args)
        self.remote_python, self.remote_profile_dir = remote_python, remote_profile_dir
        self.remote_env, self.connection = remote_env, connection
        self.sent_files = {}  # host -> path of its copy of the engine file

    def _child(self, host, args, connection_file, env):
        return SSHEngineLauncher(
            hostname=host, ssh_cmd=self.ssh_cmd, ssh_args=self.ssh_args,
            remote_python=self.remote_python, remote_profile_dir=self.remote_profile_dir,
            remote_env=self.remote_env, connection_file=connection_file,
            profile_dir=self.profile_dir, cluster_id=self.cluster_id,
            program_args=[*self.program_args, *args], env=env, stop_timeout=self.stop_timeout)

    def _remote_file(self):
        """A new path for the engine file in the host's security folder."""
        rdir = os.path.join(self.remote_profile_dir or self.profile_dir, "security")
        return os.path.join(rdir, f"minipar-engine-{self.cluster_id or 'default'}-"
                                  f"{secrets.token_hex(3)}.json")

    def _send(self, host, remote):
        """Copy the engine file to `host`, at `remote`."""
        local = os.path.join(self.profile_dir, "security", protocol.ENGINE_FILE)
        env = {**os.environ, **self.env}
        mkdir = f"umask 077; mkdir -p {shlex.quote(os.path.dirname(remote))}"
        mkdir_cmd = [*self.ssh_cmd, *self.ssh_args, host, mkdir]
        scp = [*self.scp_cmd, *_scp_args(self.ssh_args), "-q", local, f"{host}:{remote}"]
        for cmd in (mkdir_cmd, scp):
            try:
                r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=SEND_TIMEOUT_S, env=env)
            except subprocess.TimeoutExpired:   # a host that never answered is not asked
                if cmd is mkdir_cmd:            # to remove it (stop); scp may have written it
                    self.sent_files.pop(host, None)
                raise _no_answer(f"sending the engine file to {host}", cmd,
                                 [*self.ssh_cmd, *self.ssh_args], host) from None
            except FileNotFoundError:
                self.sent_files.pop(host, None)   # nothing was sent
                raise LauncherError(_not_installed(self, cmd[0])) from None
            if r.returncode:
                raise LauncherError(f"sending the engine file to {host} failed: "
                                    f"{shlex.join(cmd)}: {r.stderr.strip()}")

    def start(self, n=None):
        self._check_state(BEFORE, "start")
        hosts = self._specs or {"localhost": (self._default_n(n), [])}
        self.n = sum(count for count, _ in hosts.values())
        try:
            for host, (count, args) in hosts.items():
                env, file = dict(self.env), None
                if self.connection == "scp":   # recorded first: a Ctrl-C in scp leaves no file
                    file = self.sent_files[host] = self._remote_file()
                    self._send(host, file)
                elif self.connection == "env":
                    path = os.path.join(self.profile_dir, "security", protocol.ENGINE_FILE)
                    with open(path) as f:
                        env["MINIPAR_CONNECTION_INFO"] = f.read()
                    file = self._remote_file()
                for _ in range(count):
                    child = self._child(host, args, file, env)
                    if self.connection == "env":
                        child.ssh_args = [*child.ssh_args, "-o", "SendEnv=MINIPAR_CONNECTION_INFO"]
                    self._children.append(child)   # first: a Ctrl-C in start() finds it
                    child.start()
                    if self.connection == "env":   # written there by the engine's shell now
                        self.sent_files[host] = file
        except BaseException:
            self._stop_children()
            raise
        self.notify_start({"hosts": {h: c for h, (c, _) in hosts.items()}})
        self._watch_children()

    def _reconstruct(self):
        # Its engines gone, their engine files still on the hosts (its owner was killed, and
        # the controller stopped the engines): an ended set, not none, so that stop() (the
        # controller's `launcher stop`, or `launcher clean`) still removes those files.
        if self._children or not self.sent_files:
            return super()._reconstruct()
        self.notify_stop(self._stop_data())

    def _stop_children(self):
        # SIGTERM everywhere first, then wait: hosts stop in parallel
        threads = [threading.Thread(target=c.stop) for c in self._children]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for host, path in self.sent_files.items():
            cmd = [*self.ssh_cmd, *self.ssh_args, host, f"rm -f {shlex.quote(path)}"]
            try:
                subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=SEND_TIMEOUT_S, env={**os.environ, **self.env})
            except subprocess.TimeoutExpired:
                log.warning("ssh %s: removing %s timed out", host, path)
