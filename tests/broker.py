"""A private RabbitMQ node for the tests (a pytest plugin: ``pytest_plugins = ["broker"]``).

The session-scoped fixture :func:`rabbitmq` starts a node of its own from the installed
``rabbitmq-server`` (the Debian package; ``./test.sh`` installs it): its own node name,
free ports for AMQP, Erlang distribution and epmd, everything bound to 127.0.0.1, its data,
logs, config and Erlang cookie in a temporary folder, no plugins.  It never touches a
system node, ``/var/lib/rabbitmq`` or the system epmd, and works as root (the Debian
wrapper, which would switch to the ``rabbitmq`` user, is bypassed).  Users and their
permissions are loaded from a definitions file at boot; more can be added with
:meth:`Broker.add_user`.  :meth:`Broker.stop_app` and :meth:`Broker.start_app` stop and
restart the broker application (connections drop, durable queues and persistent messages
survive) for restart tests.  At the end the node and its epmd are stopped.

If RabbitMQ is not installed the fixture fails (it does not skip): the project's test
command installs it, so its absence is an error of the environment.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.amqp import REQUEST_EXCHANGE, bcast_queue

# users created at boot (name -> password); the server's own user is ADMIN
ADMIN = ("ronda", "ronda-broker-pw")
CLIENTS = {"carlos": "carlos-pw", "ana": "ana-pw", "bea": "bea-pw"}
START_TIMEOUT_S = 60.0
DEBIAN_LIB = Path("/usr/lib/rabbitmq/bin")


def client_permissions(user: str) -> tuple[str, str, str]:
    """(configure, write, read) for an algorithmic trader: declare its own server-named
    reply queues, publish requests, read its own broadcast queue and reply queues."""
    gen = r"amq\.gen-.*"
    return (
        f"^{gen}$",
        f"^({re.escape(REQUEST_EXCHANGE)}|{gen})$",
        f"^({re.escape(bcast_queue(user))}|{gen})$",
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _find(script: str) -> str | None:
    """The real RabbitMQ script, not Debian's wrapper (which switches to the rabbitmq
    user with ``su`` and runs in /var/lib/rabbitmq)."""
    direct = DEBIAN_LIB / script
    if direct.exists():
        return str(direct)
    found = shutil.which(script, path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"]))
    if found is None:
        return None
    if Path(found).resolve().name == "rabbitmq-script-wrapper":
        return None
    return found


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Broker:
    node: str
    port: int
    dist_port: int
    epmd_port: int
    base: Path
    env: dict[str, str]
    server_cmd: str
    ctl_cmd: str
    passwords: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's (administrator's) URL."""
        return self.url_for(ADMIN[0])

    def url_for(self, user: str, password: str | None = None) -> str:
        pw = self.passwords[user] if password is None else password
        return f"amqp://{user}:{pw}@127.0.0.1:{self.port}/"

    @property
    def log_file(self) -> Path:
        return self.base / "server.out"

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n NODE ARGS``; raise with its output if it fails."""
        proc = subprocess.run([self.ctl_cmd, "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def add_user(self, user: str, password: str | None = None,
                 permissions: tuple[str, str, str] | None = None) -> str:
        """Create a broker user (client permissions by default); return its URL."""
        pw = password or f"{user}-pw"
        self.ctl("add_user", user, pw)
        self.ctl("set_permissions", "-p", "/", user, *(permissions or client_permissions(user)))
        self.passwords[user] = pw
        return self.url_for(user)

    def stop_app(self) -> None:
        """Stop the broker application (every connection drops; the node stays up)."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("the broker did not listen again after start_app")
            time.sleep(0.05)

    def pause(self) -> None:
        """Freeze the node (SIGSTOP to its process group): connections stay open but the
        broker neither reads nor answers, as a hung or overloaded broker."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def start(self) -> None:
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen([self.server_cmd], env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, cwd=self.base,
                                            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _port_open(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited ({self.process.returncode}):\n"
                                   f"{self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"rabbitmq-server did not start in {START_TIMEOUT_S} s:\n"
                                   f"{self._log_tail()}")
            time.sleep(0.05)
        self.ctl("await_startup", "--timeout", str(int(START_TIMEOUT_S)))

    def stop(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                self.ctl("stop", timeout=30)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        with contextlib.suppress(Exception):  # our private epmd, on its own port
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=self.env,
                           capture_output=True, timeout=10, check=False)

    def _log_tail(self, n: int = 40) -> str:
        lines: list[str] = []
        for f in [self.log_file, *sorted((self.base / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                lines += [f"--- {f}", *f.read_text(errors="replace").splitlines()[-n:]]
        return "\n".join(lines)


def start_broker(base: Path, users: dict[str, str] | None = None,
                 erl_args: str = "") -> Broker:
    """Start a private node in ``base``; ``users`` (name -> password) get client
    permissions, the administrator ``ronda`` gets everything; ``erl_args`` are added to the
    Erlang VM's flags (RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS)."""
    server_cmd, ctl_cmd = _find("rabbitmq-server"), _find("rabbitmqctl")
    if server_cmd is None or ctl_cmd is None:
        pytest.fail("RabbitMQ is not installed (rabbitmq-server / rabbitmqctl not found). "
                    "The AMQP tests need a real broker: install the Debian package "
                    "`rabbitmq-server` (./test.sh does it: apt-get install rabbitmq-server).",
                    pytrace=False)
    users = dict(CLIENTS if users is None else users)
    port, dist_port, epmd_port = _free_port(), _free_port(), _free_port()
    node = f"ronda-test-{os.getpid()}-{port}@localhost"
    base.mkdir(parents=True, exist_ok=True)
    (base / "log").mkdir(exist_ok=True)
    cookie = base / ".erlang.cookie"
    cookie.write_text(hashlib.sha256(os.urandom(16)).hexdigest()[:20].upper())
    cookie.chmod(0o400)
    defs = {
        "users": [{"name": name, "password_hash": _password_hash(pw),
                   "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": ["administrator"] if name == ADMIN[0] else []}
                  for name, pw in [ADMIN, *users.items()]],
        "vhosts": [{"name": "/"}],
        "permissions": [{"user": ADMIN[0], "vhost": "/", "configure": ".*", "write": ".*",
                         "read": ".*"}] + [
            dict(zip(("configure", "write", "read"), client_permissions(name), strict=True),
                 user=name, vhost="/") for name in users],
    }
    (base / "definitions.json").write_text(json.dumps(defs, indent=1))
    (base / "rabbitmq.conf").write_text("\n".join([
        f"listeners.tcp.1 = 127.0.0.1:{port}",
        f"load_definitions = {base / 'definitions.json'}",
        "log.console = false",
        "log.file.level = info",
        "disk_free_limit.absolute = 10MB",
        "",
    ]))
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq-env.conf").write_text("")
    loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
    env = {
        **{k: v for k, v in os.environ.items()
           if not k.startswith(("RABBITMQ_", "ERL_"))},
        "HOME": str(base),  # the Erlang cookie
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"{loopback} {erl_args}".strip(),
        "RABBITMQ_CTL_ERL_ARGS": loopback,
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }
    broker = Broker(node, port, dist_port, epmd_port, base, env, server_cmd, ctl_cmd,
                    passwords={ADMIN[0]: ADMIN[1], **users})
    try:
        broker.start()
    except BaseException:
        broker.stop()
        raise
    return broker


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A running private RabbitMQ node for the whole test session (see the module)."""
    broker = start_broker(tmp_path_factory.mktemp("rabbitmq"))
    try:
        yield broker
    finally:
        broker.stop()
