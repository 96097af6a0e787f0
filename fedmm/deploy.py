"""Deployment helpers: TLS certificates, and a SuperLink with N SuperNodes on this machine.

``fedmm deploy certs`` writes a CA and a SuperLink certificate whose subject alternative names
cover the hosts the SuperNodes will dial. ``fedmm deploy local`` starts a SuperLink and N
SuperNodes on loopback (each node with its own ``partition-id``), writes a Flower configuration
with a ``fedmm-local`` connection, and stops every process it started when it ends. With
``--auth`` the SuperLink admits only SuperNodes whose public keys were registered with
``flwr supernode register`` (Flower's CLI-managed SuperNode authentication; it needs TLS).
See docs/deploy.md for the same steps across machines.

Why one module of this size: certificates, node keys and the processes of a local deployment, used
together by `fedmm deploy` and the tests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CONNECTION = "fedmm-local"
#: Seconds a started process gets to exit after SIGTERM before its process group is killed.
STOP_GRACE = 10.0


class DeployError(RuntimeError):
    """The local deployment cannot start: a port is taken, or the SuperLink exited at start-up."""


@dataclass(frozen=True)
class Certificates:
    """Paths of a generated CA certificate and the SuperLink's certificate and key (PEM)."""

    ca: Path
    server_cert: Path
    server_key: Path


def generate_certificates(
    out_dir: str | Path, hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 365
) -> Certificates:
    """A self-signed CA and a SuperLink certificate signed by it.

    Parameters
    ----------
    out_dir:
        Where ``ca.crt``, ``server.pem`` and ``server.key`` are written.
    hosts:
        Names and IP addresses the SuperNodes use to reach the SuperLink; each becomes a subject
        alternative name (an IP address needs an ``IP:`` entry, a name a ``DNS:`` entry).
    days:
        Validity of both certificates.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if not hosts:
        raise ValueError("give at least one host name or IP address for the certificate (e.g. --host 10.0.0.5)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmm CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(out / "ca.crt", out / "server.pem", out / "server.key")
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.server_key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths.server_key.chmod(0o600)
    return paths


def generate_node_key(path: str | Path) -> Path:
    """An EC (NIST P-384) key pair for SuperNode authentication, in OpenSSH format.

    Parameters
    ----------
    path:
        The private key file (``flower-supernode --auth-supernode-private-key``); the public key,
        the one to register with ``flwr supernode register``, is written beside it as ``<path>.pub``.

    Returns the path of the public key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = Path(path)
    private.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public = private.with_name(private.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    return public


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise :class:`DeployError` naming ``port`` when another process listens on it.

    Parameters
    ----------
    port:
        The TCP port the SuperLink is to bind.
    host:
        The address it binds (``127.0.0.1`` for the loopback deployment).
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection in TIME_WAIT is no user
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise DeployError(
                    f"cannot use port {port} on {host} for the SuperLink: {err.strerror}; pass another --port"
                ) from None
            raise DeployError(
                f"port {port} on {host} is already in use by another process; stop it or "
                f"pass another --port (e.g. --port {free_port()})"
            ) from None


@contextlib.contextmanager
def stop_on_signals(
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
) -> Iterator[None]:
    """Within the block, the first of ``signals`` raises :class:`KeyboardInterrupt` in the main
    thread (so ``with LocalDeployment(...)`` stops what it started); later ones are ignored while
    the processes stop. A signal the process inherited as ignored (``nohup`` ignores SIGHUP) stays
    ignored. The previous handlers come back at the end.

    Parameters
    ----------
    signals:
        The signals that stop the deployment.
    """
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if received:
            return
        received.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig, old in previous.items():
        if old is not signal.SIG_IGN:
            signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class LocalDeployment:
    """A SuperLink and ``num_nodes`` SuperNodes on loopback; use it as a context manager.

    Parameters
    ----------
    workdir:
        Holds each process's ``FLWR_HOME``, logs, the SuperLink database, certificates and the Flower
        configuration (``flwr-home/config.toml``) with the ``fedmm-local`` connection.
    num_nodes:
        SuperNodes to start; node ``i`` gets ``partition-id=i num-partitions=num_nodes``.
    tls:
        Serve over TLS with freshly generated certificates instead of ``--insecure``.
    port:
        SuperLink port on 127.0.0.1 (0 picks a free one); :meth:`start` raises :class:`DeployError`
        naming it when another process listens there.
    auth:
        SuperNode authentication (needs ``tls``): the SuperLink runs with ``--enable-supernode-auth``,
        each node gets a key pair ``keys/node<i>`` (+ ``.pub``) whose public key is registered with
        ``flwr supernode register`` before the node starts with ``--auth-supernode-private-key``;
        a node without a registered key is refused.
    state_file:
        Keep the SuperLink's state (runs, messages, registered keys) in ``state.db`` (SQLite,
        ``--database``), so that it survives a SuperLink restart; ``False``: in memory (Flower's
        default), which has no file lock for many nodes to contend for.
    """

    workdir: Path
    num_nodes: int
    tls: bool = False
    port: int = 0
    auth: bool = False
    state_file: bool = True
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_nodes < 1:
            raise ValueError(f"--nodes must be >= 1, got {self.num_nodes}")
        if self.auth and not self.tls:
            raise ValueError(
                "SuperNode authentication needs TLS (flower-superlink refuses --enable-supernode-auth "
                "with --insecure): pass tls=True as well (fedmm deploy local --auth implies --tls)"
            )
        self.workdir = Path(self.workdir).resolve()
        self.port = self.port or free_port()
        self.certs: Certificates | None = None
        self.node_ids: dict[int, int] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` for ``flwr run . fedmm-local``."""
        return self.workdir / "flwr-home"

    def start(self) -> LocalDeployment:
        """Start the SuperLink and every SuperNode; on any failure (also an interrupt) stop what was
        started and raise. A taken port or a SuperLink that exits at start-up raises
        :class:`DeployError` before any SuperNode starts."""
        check_port_free(self.port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        security = ["--insecure"]
        if self.tls:
            self.certs = generate_certificates(self.workdir / "certs")
            security = [
                "--ssl-ca-certfile",
                str(self.certs.ca),
                "--ssl-certfile",
                str(self.certs.server_cert),
                "--ssl-keyfile",
                str(self.certs.server_key),
            ]
        if self.auth:
            security.append("--enable-supernode-auth")
        state = ["--database", str(self.workdir / "state.db")] if self.state_file else []
        try:
            self._spawn(
                "superlink",
                [
                    "flower-superlink",
                    *security,
                    "--port",
                    str(self.port),
                    *state,
                    "--disable-runtime-dependency-installation",
                ],
            )
            self._wait_for_port(self.port)
            self._write_flwr_config()  # `flwr supernode register` needs the connection
            for i in range(self.num_nodes):
                self.start_node(i)
            self._check_superlink()
        except BaseException:
            self.stop()
            raise
        return self

    def node_key(self, partition_id: int) -> Path:
        """Private key of SuperNode ``partition_id`` (``keys/node<i>``; its public key ``.pub``)."""
        return self.workdir / "keys" / f"node{partition_id}"

    def register_node(self, public_key: Path) -> int:
        """Register ``public_key`` with the SuperLink (``flwr supernode register``); its node id."""
        out = self._flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json")
        try:
            return int(json.loads(out[out.index("{") :])["node-id"])
        except (ValueError, KeyError) as err:
            raise RuntimeError(f"flwr supernode register {public_key} gave no node id ({err}):\n{out}") from None

    def start_node(self, partition_id: int) -> None:
        """Start (or restart) SuperNode ``partition_id``; with ``auth`` its key is generated and
        registered the first time (a restarted node reuses it)."""
        security = ["--root-certificates", str(self.certs.ca)] if self.certs else ["--insecure"]
        if self.auth:
            key = self.node_key(partition_id)
            if partition_id not in self.node_ids:
                self.node_ids[partition_id] = self.register_node(generate_node_key(key))
            security += ["--auth-supernode-private-key", str(key)]
        self._spawn(
            f"node{partition_id}",
            [
                "flower-supernode",
                *security,
                "--superlink",
                self.address,
                "--port",
                str(free_port()),
                "--node-config",
                f"partition-id={partition_id} num-partitions={self.num_nodes}",
            ],
        )

    def stop_node(self, partition_id: int) -> None:
        """Kill SuperNode ``partition_id`` and everything it started (a crashed machine)."""
        self._kill(f"node{partition_id}", signal.SIGKILL)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop every process started here: the SuperNodes first, then the SuperLink; each group
        gets SIGTERM and ``grace`` seconds, then SIGKILL, and the processes Flower started in
        sessions of their own (SuperExec, ClientApps) are killed too.

        Parameters
        ----------
        grace:
            Seconds the processes of one step get to exit after SIGTERM.
        """
        nodes = [name for name in self.processes if name != "superlink"]
        self._stop_group(nodes, grace)
        self._stop_group(["superlink"], grace)

    def pids(self) -> dict[str, int]:
        """Process id (also its process group's id) of every process started here, by name."""
        return {name: proc.pid for name, proc in self.processes.items()}

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------------------------------
    def _flwr(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``flwr <args>`` against this deployment's Flower configuration; its output."""
        path = _path_with_venv()
        env = {**os.environ, "FLWR_HOME": str(self.flwr_home), "PATH": path}
        proc = subprocess.run(
            [_executable("flwr", path), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def _spawn(self, name: str, argv: list[str]) -> None:
        path = _path_with_venv()
        exe = _executable(argv[0], path)
        env = {**os.environ, "FLWR_HOME": str(self.workdir / name), "PATH": path}
        log = open(self.workdir / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            [exe, *argv[1:]], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.workdir
        )

    def _kill(self, name: str, sig: signal.Signals) -> None:
        if name in self.processes:
            self._stop_group([name], STOP_GRACE, sig)

    def _stop_group(self, names: Sequence[str], grace: float, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send ``sig`` to the process groups of ``names`` at once, wait up to ``grace`` seconds for
        them, SIGKILL the groups (stragglers and any child left in them), then what they started
        outside their group (found by their ``FLWR_HOME``)."""
        procs = {name: self.processes.pop(name) for name in names if name in self.processes}
        for proc in procs.values():
            _signal_group(proc.pid, sig)
        deadline = time.monotonic() + grace
        for proc in procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                pass
        for name, proc in procs.items():
            _signal_group(proc.pid, signal.SIGKILL)  # the group id stays reserved while members live
            proc.wait()
            _kill_by_flwr_home(self.workdir / name)

    def _check_superlink(self) -> None:
        """Raise :class:`DeployError` (with the last line of its log) when the SuperLink has exited."""
        proc, log = self.processes["superlink"], self.workdir / "superlink.log"
        if proc.poll() is not None:
            raise DeployError(
                f"the SuperLink exited at start-up (exit code {proc.returncode}): {_last_line(log)}; see {log}"
            )

    def _wait_for_port(self, port: int, timeout: float = 30.0) -> None:
        log = self.workdir / "superlink.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_superlink()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise DeployError(f"the SuperLink did not listen on port {port} within {timeout:.0f} s; see {log}")

    def _write_flwr_config(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        security = f'root-certificates = "{self.certs.ca}"' if self.certs else "insecure = true"
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\n{security}\n'
        )


def _path_with_venv() -> str:
    """``PATH`` with this interpreter's directory first: Flower's executables live there (the
    virtual environment), and the processes they start look up the next ones (flower-superexec,
    flwr-clientapp) on ``PATH``."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _executable(name: str, path: str) -> str:
    exe = shutil.which(name, path=path)
    if exe is None:
        raise FileNotFoundError(f"{name} is not installed; install fedmm in this environment (make install)")
    return exe


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _last_line(path: Path) -> str:
    """The last non-empty line of a log file (empty when there is none)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def processes_by_flwr_home(root: Path) -> dict[int, Path]:
    """Live processes whose ``FLWR_HOME`` is ``root`` or lies below it, with that ``FLWR_HOME``.

    Flower's SuperExec and ClientApp processes start sessions of their own and outlive their
    parent; they inherit its ``FLWR_HOME``, which identifies them (Linux: read from ``/proc``).

    Parameters
    ----------
    root:
        The deployment's work directory, or one process's ``FLWR_HOME``.
    """
    key, below = b"FLWR_HOME=" + str(root).encode(), b"FLWR_HOME=" + str(root).encode() + b"/"
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        home = next((v for v in env if v == key or v.startswith(below)), None)
        if home is not None:
            found[int(pid)] = Path(home[len(b"FLWR_HOME=") :].decode())
    return found


def _kill_by_flwr_home(home: Path) -> None:
    """SIGKILL every process of ``FLWR_HOME`` ``home`` (:func:`processes_by_flwr_home`)."""
    for pid, found in processes_by_flwr_home(home).items():
        if found == home:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
