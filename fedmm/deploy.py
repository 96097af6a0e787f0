"""Deployment helpers: TLS certificates, and a SuperLink with N SuperNodes on this machine.

``fedmm deploy certs`` writes a CA and a SuperLink certificate whose subject alternative names
cover the hosts the SuperNodes will dial. ``fedmm deploy local`` starts a SuperLink and N
SuperNodes on loopback (each node with its own ``partition-id``), writes a Flower configuration
with a ``fedmm-local`` connection, and stops every process it started when it ends.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CONNECTION = "fedmm-local"


@dataclass(frozen=True)
class Certificates:
    """Paths of a generated CA certificate and the SuperLink's certificate and key (PEM)."""

    ca: Path
    server_cert: Path
    server_key: Path


def generate_certificates(out_dir: str | Path, hosts: Sequence[str] = ("localhost", "127.0.0.1"),
                          days: int = 365) -> Certificates:
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
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmm CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
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
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(out / "ca.crt", out / "server.pem", out / "server.key")
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.server_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    paths.server_key.chmod(0o600)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        SuperLink port (0 picks a free one).
    """

    workdir: Path
    num_nodes: int
    tls: bool = False
    port: int = 0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_nodes < 1:
            raise ValueError(f"--nodes must be >= 1, got {self.num_nodes}")
        self.workdir = Path(self.workdir).resolve()
        self.port = self.port or free_port()
        self.certs: Certificates | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` for ``flwr run . fedmm-local``."""
        return self.workdir / "flwr-home"

    def start(self) -> LocalDeployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        security = ["--insecure"]
        if self.tls:
            self.certs = generate_certificates(self.workdir / "certs")
            security = ["--ssl-ca-certfile", str(self.certs.ca), "--ssl-certfile", str(self.certs.server_cert),
                        "--ssl-keyfile", str(self.certs.server_key)]
        self._spawn("superlink", ["flower-superlink", *security, "--port", str(self.port),
                                  "--database", str(self.workdir / "state.db"),
                                  "--disable-runtime-dependency-installation"])
        self._wait_for_port(self.port)
        for i in range(self.num_nodes):
            self.start_node(i)
        self._write_flwr_config()
        return self

    def start_node(self, partition_id: int) -> None:
        """Start (or restart) SuperNode ``partition_id``."""
        security = ["--root-certificates", str(self.certs.ca)] if self.certs else ["--insecure"]
        self._spawn(f"node{partition_id}", [
            "flower-supernode", *security, "--superlink", self.address,
            "--port", str(free_port()),
            "--node-config", f"partition-id={partition_id} num-partitions={self.num_nodes}",
        ])

    def stop_node(self, partition_id: int) -> None:
        """Kill SuperNode ``partition_id`` and everything it started (a crashed machine)."""
        self._kill(f"node{partition_id}", signal.SIGKILL)

    def stop(self) -> None:
        for name in list(self.processes):
            self._kill(name, signal.SIGTERM)

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        # Flower's executables live beside this interpreter (the virtual environment), and the
        # processes they start look up the next ones (flower-superexec, flwr-clientapp) on PATH.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        exe = shutil.which(argv[0], path=path)
        if exe is None:
            raise FileNotFoundError(f"{argv[0]} is not installed; install fedmm in this environment (make install)")
        env = {**os.environ, "FLWR_HOME": str(self.workdir / name), "PATH": path}
        log = open(self.workdir / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen([exe, *argv[1:]], stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True, cwd=self.workdir)

    def _kill(self, name: str, sig: signal.Signals) -> None:
        proc = self.processes.pop(name, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        _kill_by_flwr_home(self.workdir / name)

    def _wait_for_port(self, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the SuperLink did not listen on port {port} within {timeout:.0f} s; "
                           f"see {self.workdir / 'superlink.log'}")

    def _write_flwr_config(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        security = f'root-certificates = "{self.certs.ca}"' if self.certs else "insecure = true"
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\n{security}\n'
        )


def _kill_by_flwr_home(home: Path) -> None:
    """Flower's SuperExec and ClientApp processes start sessions of their own and outlive their
    parent; they inherit its ``FLWR_HOME``, which identifies them."""
    marker = b"FLWR_HOME=" + str(home).encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in env:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
