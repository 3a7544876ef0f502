"""Batch-system launchers: a controller or a set of engines as one job of Slurm, PBS, SGE
or LSF, described as data (commands, a job-id pattern, a status parser, a template).

The launcher contract (states, ``to_dict`` / ``from_dict``, ``stop()``) is launcher.py's;
this module only says how to submit, watch, signal and delete a job. Found by short name
("slurm", "pbs", "sge", "lsf") through ``launcher.find_launcher_class``.

Map of the module::

    BatchSystemLauncher              submit / delete / signal / status commands + a template
      BatchControllerLauncher          one task: python -m <pkg>.controller
      BatchEngineSetLauncher           n tasks (a job array, or srun's) of <pkg>.engine
      SlurmLauncher                  sbatch / scancel / squeue; engines are srun's tasks
      PBSLauncher                    qsub / qdel / qsig / qstat; engines a job array (-t)
      SGELauncher                    qsub / qdel / qstat (no signal); engines a job array
      LSFLauncher                    bsub < script / bkill / bjobs; engines a job array
        each with <Kind>ControllerLauncher and <Kind>EngineSetLauncher
    _rows, _classify, _script        a status table's rows and states; a default template

How a job is followed::

    start(): the template rendered -> <log_dir>/<kind>-<role>-<cluster_id>-<hex>.sh
             -> the submit command -> job id (job_id_regexp) -> running; a watcher
             thread asks the status command every poll_interval until it says 'done',
             or 'error' (a job that will never run: deleted, why in its output)
    stop():  the delete command, then the status until 'done' (the batch system's own
             SIGTERM-then-SIGKILL grace), bounded by max(stop_timeout, 30 s)

launcher.py imports nothing from here at import time (it forwards these names on first
use), so this module may import launcher.py at its top.
"""

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time

from .launcher import (BEFORE, RUNNING, BaseLauncher, ControllerLauncher, EngineLauncher,
                       LauncherError, NotRunning, _not_installed, _read_text,
                       _signals_deferred)

log = logging.getLogger(__name__)

# How often a watcher asks the status command about its job: each ask is a process (and a
# request to the batch server), and a job's end is noticed this much later. 1..30 s.
BATCH_POLL_INTERVAL_S = 1.0


class BatchSystemLauncher(BaseLauncher):
    """A job for a batch system, described as data.

    A class gives the commands (each a list; the job id or the script path is appended,
    ``{sig}`` is replaced by the signal's name), a regular expression that finds the
    job id in the submit command's output (its group 1 if it has one), a status command
    with ``parse_status``, and a default template. Templates are ``str.format`` text
    with ``{n}``, ``{queue}``, ``{profile_dir}``, ``{cluster_id}``,
    ``{program_and_args}``, ``{output_file}`` and ``{log_dir}``; give your own as
    `batch_template` (a string) or `batch_template_file`. A `queue` adds
    ``queue_template`` to a template that does not mention ``{queue}`` itself.
    Every command can be replaced per launcher (``submit_command=["/opt/pbs/bin/qsub"]``).
    """

    submit_command = ()
    submit_stdin = False  # True: the script goes to the submit command's stdin (bsub < job)
    delete_command = ()
    signal_command = None  # None: the batch system cannot signal a job
    status_command = ()
    job_id_regexp = r"\d+"
    job_id_env = ""   # the variable that holds the job's id in its processes
    queue_template = ""
    default_template = ""
    script_suffix = ".sh"

    _options = ("queue", "batch_template", "batch_template_file", "submit_command",
                "delete_command", "signal_command", "status_command", "job_id_regexp",
                "poll_interval")
    _state = ("job_id", "batch_file")

    def __init__(self, queue="", batch_template=None, batch_template_file=None,
                 submit_command=None, delete_command=None, signal_command=None,
                 status_command=None, job_id_regexp=None, poll_interval=BATCH_POLL_INTERVAL_S,
                 **kwargs):
        super().__init__(**kwargs)
        self.queue = queue
        self.batch_template = batch_template
        self.batch_template_file = batch_template_file
        cls = type(self)
        self.submit_command = list(submit_command or cls.submit_command)
        self.delete_command = list(delete_command or cls.delete_command)
        sc = signal_command or cls.signal_command
        self.signal_command = list(sc) if sc else None
        self.status_command = list(status_command or cls.status_command)
        self.job_id_regexp = job_id_regexp or cls.job_id_regexp
        if not poll_interval > 0:   # 0 ran the status command in a busy loop
            raise ValueError(f"poll_interval={poll_interval!r}: give the seconds between two "
                             "asks of the status command, > 0 (1..30 is reasonable)")
        self.poll_interval = poll_interval
        self.job_id = self.batch_file = self._watcher = None

    # -- the script

    def template(self):
        if self.batch_template is not None:
            return self.batch_template
        if self.batch_template_file:
            with open(self.batch_template_file) as f:
                return f.read()
        return self.default_template

    def context(self):
        return {"n": self.n, "queue": self.queue, "profile_dir": self.profile_dir,
                "cluster_id": self.cluster_id or "default", "output_file": self.output_file,
                "log_dir": self.log_dir, "program_and_args": shlex.join(self.program_and_args)}

    def render(self):
        """The job script for the current settings."""
        text = self.template()
        if self.queue and "{queue}" not in text and self.queue_template:
            first, _, rest = text.partition("\n")
            if first.startswith("#!"):
                text = f"{first}\n{self.queue_template}\n{rest}"
            else:
                text = f"{self.queue_template}\n{text}"
        context = self.context()
        try:
            return text.format(**context)
        except (KeyError, IndexError, ValueError) as e:   # found here, before a job is submitted
            what = f"{{{e.args[0]}}} is not a name it knows" if isinstance(e, KeyError) else e
            raise LauncherError(
                f"{self.kind} {self.role} batch template: {what}; its names are "
                f"{', '.join('{%s}' % k for k in context)}, and a brace meant for the script "
                "itself is written twice ({{ and }})") from None

    # -- commands

    def _run(self, cmd, stdin=None):
        try:
            r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60,
                               cwd=self.log_dir, env=self._child_env())
        except FileNotFoundError:
            raise LauncherError(_not_installed(self, cmd[0])) from None
        log.debug("%s -> %s %r %r", shlex.join(cmd), r.returncode, r.stdout, r.stderr)
        return r

    def _by_hand(self, e, command):
        """What to do by hand when `command` (given the job id) raised `e`: run it, or where
        it is not installed here (_run's LauncherError), run it where it is."""
        if isinstance(e, LauncherError):
            return (f"run {shlex.join([os.path.basename(command[0]), *command[1:], self.job_id])} "
                    f"on a machine where {self.kind}'s commands are installed (a login node)")
        return f"run {shlex.join([*command, self.job_id])} by hand"

    def parse_job_id(self, output):
        m = re.search(self.job_id_regexp, output)
        if not m:
            raise LauncherError(f"no job id (pattern {self.job_id_regexp!r}) in the output "
                                f"of {shlex.join(self.submit_command)}: {output!r}")
        return m.group(1) if m.groups() else m.group(0)

    @staticmethod
    def parse_status(returncode, output, job_id):
        """'pending', 'running' or 'done' from the status command's result; 'error' for a
        job the batch system will not run until someone acts (SGE's Eqw)."""
        raise NotImplementedError

    def error_reason(self):
        """Why the batch system put the job in an error state, in its own words."""
        return ""

    def job_status(self):
        r = self._run([*self.status_command, self.job_id])
        return self.parse_status(r.returncode, r.stdout, self.job_id)

    def _pending(self):
        with contextlib.suppress(OSError, subprocess.SubprocessError, LauncherError):
            return self.job_status() == "pending"

    def start(self, n=1):
        self._check_state(BEFORE, "start")
        self.n = n
        self.output_file = self._output_path(f"{self.kind}-{self.role}")
        script = self.render()
        self.batch_file = self.output_file[:-len(".log")] + self.script_suffix
        with open(self.batch_file, "w") as f:
            f.write(script)
        os.chmod(self.batch_file, 0o700)
        # A Ctrl-C would kill the submit command once the job may be queued, its id unread:
        # it waits until this launcher runs (at most the submit's timeout), so stop() deletes it
        with _signals_deferred():
            r = (self._run(self.submit_command, stdin=script) if self.submit_stdin
                 else self._run([*self.submit_command, self.batch_file]))
            if r.returncode:   # said as it ran: bsub reads the script on its stdin
                raise LauncherError(f"{shlex.join(self.submit_command)} "
                                    f"{'< ' if self.submit_stdin else ''}{self.batch_file} failed "
                                    f"({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
            self.job_id = self.parse_job_id(r.stdout + r.stderr)
            self.notify_start({"job_id": self.job_id})
            self._watch()

    def _watch(self):
        # executes in the watcher thread: the job has ended when the status says so
        def run():
            while self.state == RUNNING:
                try:
                    status = self.job_status()
                    if status == "error":   # else the start waits its whole timeout
                        self._drop_failed_job()
                    if status in ("done", "error"):
                        break
                except (OSError, subprocess.SubprocessError, LauncherError) as e:   # not on PATH
                    log.warning("%s: status of job %s: %s", self.kind, self.job_id, e)
                self._stopped.wait(self.poll_interval)
            self.notify_stop({"job_id": self.job_id})
        self._watcher = threading.Thread(target=run, daemon=True,
                                         name=f"minipar-watch-{self.kind}-{self.job_id}")
        self._watcher.start()

    def _drop_failed_job(self):
        # executes in the watcher thread: the reason goes where get_output() reads
        reason = self.error_reason()
        with contextlib.suppress(OSError):
            with open(self.output_file, "a") as f:
                f.write(f"{self.kind} job {self.job_id} is in an error state, in which it will "
                        f"never start; deleted it ({shlex.join(self.delete_command)}). "
                        f"{reason or 'The status command did not say why.'}\n")
        self._run([*self.delete_command, self.job_id])

    def _reconstruct(self):
        if self.job_status() == "done":
            raise NotRunning(f"{self.kind} job {self.job_id} has ended")
        self._watch()

    def signal(self, sig):
        self._check_state(RUNNING, "signal")
        if not self.signal_command:
            raise LauncherError(f"{self.kind} has no command to signal a job; stop() it instead")
        name = signal.Signals(sig).name[3:]
        r = self._run([a.replace("{sig}", name) for a in self.signal_command] + [self.job_id])
        if r.returncode:
            raise LauncherError(f"signalling {self.kind} job {self.job_id} failed: "
                                f"{r.stderr.strip()}")

    def stop(self):
        """Delete the job and wait until the batch system says it has ended."""
        if self.state != RUNNING:
            return self.stop_data
        # the batch system sends SIGTERM, then SIGKILL after its own grace (Slurm's KillWait),
        # to this process too where it runs in the job (the `launcher stop` of a controller
        # whose owner is gone): it finishes within that grace, not waiting for its own end
        own = os.environ.get(self.job_id_env) == self.job_id
        if own and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # a command that cannot run (not on PATH, over its timeout) is said, not raised: this
        # launcher ends either way, and the log says what is left to do by hand
        delete, wait_end = shlex.join([*self.delete_command, self.job_id]), not own
        try:
            r = self._run([*self.delete_command, self.job_id])
            if r.returncode:
                log.info("%s: %s", delete, r.stderr.strip())
        except (OSError, subprocess.SubprocessError, LauncherError) as e:
            log.error("%s job %s may still run: could not delete it (%s); %s", self.kind,
                      self.job_id, e, self._by_hand(e, self.delete_command))
            wait_end = False   # nothing was asked to end it: no end to wait for
        deadline = time.monotonic() + max(self.stop_timeout, 30.0)
        while wait_end:
            try:
                if self.job_status() == "done":
                    break
            except (OSError, subprocess.SubprocessError, LauncherError) as e:
                log.warning("%s job %s: deleted (%s), but could not ask whether it has ended "
                            "(%s); to check, %s", self.kind, self.job_id, delete, e,
                            self._by_hand(e, self.status_command))
                break
            if time.monotonic() > deadline:
                log.error("%s job %s still listed %.0f s after %s", self.kind, self.job_id,
                          max(self.stop_timeout, 30.0), delete)
                break
            time.sleep(0.2)
        self.notify_stop({"job_id": self.job_id})
        if self._watcher is not None:
            self._watcher.join(self.poll_interval + 60)
        return self.stop_data

    def get_output(self, remove=False):
        # some systems ignore the script's output path (Slurm's qsub: <script>.o<job id>)
        paths = [self.output_file] if self.output_file else []
        if self.batch_file and self.job_id:
            base = os.path.basename(self.batch_file)
            job = self.job_id.split(".")[0].split("[")[0]
            paths += sorted(os.path.join(self.log_dir, n) for n in os.listdir(self.log_dir)
                            if n.startswith(base + ".") and job in n)
        text = "".join(_read_text(p) for p in paths)
        if self.state == RUNNING and not text and self._pending():   # why nothing is there yet
            text = (f"{self.kind} job {self.job_id} is still pending: the batch system has not "
                    f"started it ({self.status_command[0]} lists it with the reason); ask for "
                    "fewer engines or another queue (queue=), or wait longer (timeout=)\n")
        if remove:
            for p in paths:
                with contextlib.suppress(OSError):
                    os.remove(p)
        return text


class BatchControllerLauncher(BatchSystemLauncher, ControllerLauncher):
    role = "controller"

    def start(self):
        super().start(1)


class BatchEngineSetLauncher(BatchSystemLauncher, EngineLauncher):
    role = "engines"

    def start(self, n=None):
        super().start(self._default_n(n))


def _rows(output, header_prefix):
    """The data rows of a table printed by a status command (after its header lines)."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header_prefix):
            return [r.split() for r in lines[i + 1:]
                    if r.strip() and not set(r.strip()) <= {"-", " "}]
    return []


def _classify(states, running, pending):
    if any(s in running for s in states):
        return "running"
    return "pending" if any(s in pending for s in states) else "done"


def _script(prefix, *options, run="{program_and_args}"):
    """A default template: ``#!/bin/sh``, `prefix` and each option on a line, `run`."""
    return "\n".join(["#!/bin/sh", *(f"{prefix} {o}" for o in options), run, ""])


class SlurmLauncher(BatchSystemLauncher):
    """Slurm: sbatch / scancel / squeue. Engines run as the tasks of one srun."""

    kind = "slurm"
    job_id_env = "SLURM_JOB_ID"
    submit_command = ("sbatch", "--parsable")
    delete_command = ("scancel",)
    signal_command = ("scancel", "--signal={sig}")  # reaches the srun steps: the engines
    status_command = ("squeue", "--noheader", "--format=%T", "--jobs")
    job_id_regexp = r"^(\d+)"
    queue_template = "#SBATCH --partition={queue}"

    @staticmethod
    def parse_status(returncode, output, job_id):
        if returncode:  # squeue forgets a job soon after it ends (an error, or no line)
            return "done"
        return _classify(output.split(), ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED"),
                         ("PENDING", "CONFIGURING", "REQUEUED", "RESIZING"))


class SlurmControllerLauncher(SlurmLauncher, BatchControllerLauncher):
    default_template = _script("#SBATCH", "--job-name=minipar-controller-{cluster_id}",
                               "--ntasks=1", "--output={output_file}",
                               run="srun {program_and_args}")


class SlurmEngineSetLauncher(SlurmLauncher, BatchEngineSetLauncher):
    default_template = _script("#SBATCH", "--job-name=minipar-engines-{cluster_id}",
                               "--ntasks={n}", "--output={output_file}",
                               run="srun {program_and_args}")


class PBSLauncher(BatchSystemLauncher):
    """PBS / Torque: qsub / qdel / qsig / qstat. Engines are a job array (-t 1-n)."""

    kind = "pbs"
    job_id_env = "PBS_JOBID"
    submit_command = ("qsub",)
    delete_command = ("qdel",)
    signal_command = ("qsig", "-s", "{sig}")
    status_command = ("qstat",)
    job_id_regexp = r"\d+(?:\[\])?(?:\.[\w.-]+)?"
    queue_template = "#PBS -q {queue}"

    @staticmethod
    def parse_status(returncode, output, job_id):
        # Job id  Name  User  Time Use  S  Queue: S is Q/H/W/T queued, R/E running, C/F done
        if returncode:
            return "done"
        short = job_id.split(".")[0].replace("[]", "")
        states = [r[4] for r in _rows(output, "Job") if len(r) >= 6 and
                  r[0].split(".")[0].replace("[]", "") == short]
        return _classify(states, ("R", "E", "S"), ("Q", "H", "W", "T"))


class PBSControllerLauncher(PBSLauncher, BatchControllerLauncher):
    default_template = _script("#PBS", "-N minipar-ctrl", "-V", "-j oe", "-o {output_file}")


class PBSEngineSetLauncher(PBSLauncher, BatchEngineSetLauncher):
    default_template = _script("#PBS", "-N minipar-engines", "-V", "-j oe",
                               "-o {output_file}", "-t 1-{n}")


class SGELauncher(BatchSystemLauncher):
    """Son of / Sun Grid Engine: qsub / qdel / qstat. Engines are a job array (-t 1-n).

    SGE has no command to signal a job (no qsig). For qdel to send SIGTERM before
    SIGKILL, the queue needs ``terminate_method SIGTERM``.
    """

    kind = "sge"
    job_id_env = "JOB_ID"
    submit_command = ("qsub",)
    delete_command = ("qdel",)
    status_command = ("qstat",)
    job_id_regexp = r"job(?:-array)? (\d+)"
    queue_template = "#$ -q {queue}"

    def job_status(self):
        r = self._run(list(self.status_command))  # qstat lists every task of the user's jobs
        return self.parse_status(r.returncode, r.stdout, self.job_id)

    def error_reason(self):
        # "error reason    1:  12/07/2026 01:18:52 [0:14858]: error: can't open output file"
        cmd = [*self.status_command, "-j", self.job_id]
        lines = [line.split(None, 2)[2] for line in self._run(cmd).stdout.splitlines()
                 if line.startswith("error reason") and len(line.split(None, 2)) == 3]
        return f"{shlex.join(cmd)} says:\n" + "\n".join(lines) if lines else ""

    @staticmethod
    def parse_status(returncode, output, job_id):
        # job-ID prior name user state submit/start-at queue slots ja-task-ID
        if returncode:
            return "done"
        states = [r[4] for r in _rows(output, "job-ID") if len(r) >= 5 and r[0] == job_id]
        if any("E" in s for s in states):   # Eqw: it failed to start (a path, a shell)
            return "error"
        if any(set(s) & set("rtRsSTh") and "qw" not in s for s in states):
            return "running"
        return "pending" if states else "done"


class SGEControllerLauncher(SGELauncher, BatchControllerLauncher):
    default_template = _script("#$", "-N minipar-controller", "-V", "-S /bin/sh", "-j y",
                               "-o {output_file}")


class SGEEngineSetLauncher(SGELauncher, BatchEngineSetLauncher):
    default_template = _script("#$", "-N minipar-engines", "-V", "-S /bin/sh", "-j y",
                               "-o {output_file}", "-t 1-{n}")


class LSFLauncher(BatchSystemLauncher):
    """IBM Spectrum LSF: bsub (script on stdin) / bkill / bjobs. Engines are a job array."""

    kind = "lsf"
    job_id_env = "LSB_JOBID"
    submit_command = ("bsub",)
    submit_stdin = True  # bsub reads #BSUB lines only from a script given on stdin
    delete_command = ("bkill",)
    signal_command = ("bkill", "-s", "{sig}")
    status_command = ("bjobs",)
    job_id_regexp = r"Job <(\d+)>"
    queue_template = "#BSUB -q {queue}"

    @staticmethod
    def parse_status(returncode, output, job_id):
        # JOBID USER STAT QUEUE FROM_HOST EXEC_HOST JOB_NAME SUBMIT_TIME; "Job <N> is not found"
        states = [r[2] for r in _rows(output, "JOBID") if len(r) >= 3 and r[0] == job_id]
        return _classify(states, ("RUN", "USUSP", "SSUSP"), ("PEND", "PSUSP", "WAIT"))


class LSFControllerLauncher(LSFLauncher, BatchControllerLauncher):
    default_template = _script("#BSUB", "-J minipar-controller-{cluster_id}",
                               "-o {output_file}")


class LSFEngineSetLauncher(LSFLauncher, BatchEngineSetLauncher):
    default_template = _script("#BSUB", "-J minipar-engines-{cluster_id}[1-{n}]",
                               "-o {output_file}")
