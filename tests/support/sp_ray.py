"""A real multi-node Ray cluster on this one machine, for tests that kill a node.

`RayCluster` runs `ray start --head --block` and `ray start --address=...
--block` as subprocesses, each in its own process group, with every port
chosen explicitly from 20000-31999 (below the kernel's ephemeral range and
away from Ray's defaults, so it never collides with another Ray cluster on the
machine, e.g. one the test process started with `ray.init()`), a private short
temp dir and every address on 127.0.0.1. `kill_node` SIGKILLs one node and
all it spawned; `stop` does that for every node. Nothing here runs `ray stop`.

The head gets short GCS health-check settings so that a SIGKILLed node is
declared dead (and its actors' callers get `ActorDiedError`) within about a
second instead of ~20 s.

Drivers must run with `driver_env()` as their environment (or, in this
process, connect through `connect()`): else `ray.init` resolves 127.0.0.1 to
the host's IP, finds no raylet there and retries forever. The nodes run with
RAY_AUTH_MODE=disabled, which accepts drivers in either auth mode.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# GCS -> raylet health checks (RayConfig names in Ray 2.60, read by the GCS as
# RAY_<name>). Defaults 5000 / 3000 / 10000 / 5: a dead node is noticed only
# after ~20 s. With these it takes about 0.5-1 s.
FAST_FAILURE_DETECTION: dict[str, str] = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "200",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}

# Port slots: each node owns one aligned block of _SLOT ports in _PORTS,
# claimed through a pid file so that concurrent harnesses never share one.
_PORTS = range(20000, 32000)
_SLOT = 64
_SLOT_DIR = Path(tempfile.gettempdir()) / "sp_ray_slots"
_NAMED_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)
_HEAD_PORTS = ("port", "ray-client-server-port", "dashboard-port")
_FIRST_WORKER_PORT = 16  # slot offsets 16..63 are worker ports

# Every node process gets this variable (pointing at the node's temp dir).
# Raylet, agents and workers inherit it even though Ray rewrites their
# command lines, so leftovers can always be found.
_MARK = "SP_RAY_NODE"

# Each node runs as: this launcher (our Popen child) -> fork running
# `ray start --block` -> raylet, agents, workers. The launcher is a child
# subreaper, so whatever dies below it is reaped at once, not left as a
# zombie for PID 1; and it takes the node down if the process that
# started it dies without stop(). The fork keeps --node-ip-address=127.0.0.1
# (plain `ray start` turns it into the host's routable IP).
_LAUNCHER = """
import ctypes, os, sys, threading, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
owner = int(os.environ["SP_RAY_OWNER"])
ray_start = os.fork()
if ray_start == 0:
    import ray._private.services as services
    services.resolve_ip_for_localhost = lambda host: host
    from ray.scripts.scripts import main
    sys.argv[0] = "ray"
    main()
    os._exit(0)

def watchdog():  # kill the rest of our process group; the loop below reaps
    while os.getppid() == owner:
        time.sleep(0.5)
    for _ in range(3):
        for pid in [int(d) for d in os.listdir("/proc") if d.isdigit()]:
            try:
                if pid != os.getpid() and os.getpgid(pid) == os.getpid():
                    os.kill(pid, 9)
            except OSError:
                pass
        time.sleep(0.2)

threading.Thread(target=watchdog, daemon=True).start()
code = 1
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        sys.exit(code)
    if pid == ray_start:
        code = os.waitstatus_to_exitcode(status)
"""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _claim_slot() -> tuple[int, Path]:
    """An unclaimed block of _SLOT free loopback ports: (first port, claim file)."""
    _SLOT_DIR.mkdir(exist_ok=True)
    bases = list(range(_PORTS.start, _PORTS.stop - _SLOT + 1, _SLOT))
    random.shuffle(bases)
    with open(_SLOT_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for base in bases:
            claim = _SLOT_DIR / str(base)
            try:
                if psutil.pid_exists(int(claim.read_text())):
                    continue  # claimed by a live harness (a dead one's claim is reused)
            except (OSError, ValueError):
                pass
            if all(_port_free(p) for p in range(base, base + _SLOT)):
                claim.write_text(str(os.getpid()))
                return base, claim
    raise RuntimeError(f"no free block of {_SLOT} ports in {_PORTS}")


def _gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class RayNode:
    """Handle to one `ray start --block` node."""

    name: str
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    temp_dir: Path
    log_path: Path
    slot_claim: Path
    node_id: str = ""  # hex Ray node id (from the raylet's --node_id)
    killed: bool = False


class RayCluster:
    """A head plus worker nodes started with `ray start`, all on 127.0.0.1.

    Use as a context manager or call `stop()` (idempotent). `env` entries
    override the nodes' (and drivers') environment, e.g. other RAY_* knobs.
    """

    def __init__(
        self,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
        object_store_memory: int = 256 * 1024**2,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="spr", dir="/tmp"))  # short: unix sockets
        self.timeout = timeout
        self.object_store_memory = object_store_memory
        self.address = ""
        self.nodes: list[RayNode] = []
        self._gcs: Any = None
        self._env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self._env.update(
            RAY_AUTH_MODE="disabled",  # else "token" if ~/.ray/auth_token exists
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONUNBUFFERED="1",
        )
        self._env.update(FAST_FAILURE_DETECTION)
        self._env.update(env or {})

    # ---- drivers -----------------------------------------------------------

    def driver_env(self) -> dict[str, str]:
        """Environment for a driver subprocess that calls `ray.init()`."""
        env = dict(self._env)
        # Makes ray.init resolve 127.0.0.1 to itself, not to the host's IP
        # (no other effect on Linux drivers).
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        env["RAY_ADDRESS"] = self.address
        return env

    def connect(self, **kwargs: Any) -> Any:
        """`ray.init()` this process as a driver of the cluster."""
        import ray
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # see driver_env(); stays set
        return ray.init(address=self.address, **kwargs)

    # ---- starting ----------------------------------------------------------

    def start_head(self, num_cpus: int = 1, resources: dict[str, float] | None = None) -> str:
        """Starts the head node; returns its GCS address "127.0.0.1:PORT"."""
        if self.address:
            raise RuntimeError("head already started")
        args = ["--head", "--include-dashboard=false", f"--num-cpus={num_cpus}"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        head = self._start("head", args)
        self.address = f"127.0.0.1:{head.ports['port']}"
        self.wait_node(head, alive=True)
        return self.address

    def add_node(self, num_cpus: int = 1, resources: dict[str, float] | None = None) -> RayNode:
        """Starts one more node (default resources {"special": 2}); returns
        once the GCS lists it as alive."""
        if not self.address:
            raise RuntimeError("start_head() first")
        resources = {"special": 2} if resources is None else resources
        args = [f"--address={self.address}", f"--num-cpus={num_cpus}"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        node = self._start(f"n{len(self.nodes)}", args)
        self.wait_node(node, alive=True)
        return node

    def _start(self, name: str, args: list[str]) -> RayNode:
        base, claim = _claim_slot()
        names = _NAMED_PORTS + (_HEAD_PORTS if "--head" in args else ())
        ports = {n: base + i for i, n in enumerate(names)}
        temp_dir = self.root / name
        temp_dir.mkdir()
        cmd = [
            sys.executable, "-c", _LAUNCHER, "start", "--block",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            f"--object-store-memory={self.object_store_memory}",
            f"--min-worker-port={base + _FIRST_WORKER_PORT}",
            f"--max-worker-port={base + _SLOT - 1}",
            *[f"--{k}={v}" for k, v in ports.items()],
            *args,
        ]  # fmt: skip
        env = {**self._env, _MARK: str(temp_dir), "SP_RAY_OWNER": str(os.getpid())}
        log_path = self.root / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )  # fmt: skip
        node = RayNode(name, proc, ports, temp_dir, log_path, claim)
        self.nodes.append(node)
        deadline = time.monotonic() + self.timeout
        while not node.node_id:
            if b"Ray runtime started" in log_path.read_bytes():
                node.node_id = self._raylet_node_id(node)
            if not node.node_id and (proc.poll() is not None or time.monotonic() > deadline):
                self.kill_node(node)
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"ray start ({name}) failed:\n{tail}")
            time.sleep(0.05)
        return node

    @staticmethod
    def _tree(node: RayNode) -> list[psutil.Process]:
        """The launcher and all its live descendants."""
        try:
            root = psutil.Process(node.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _raylet_node_id(self, node: RayNode) -> str:
        for p in self._tree(node):
            try:
                for arg in p.cmdline():
                    if arg.startswith("--node_id="):
                        return arg.split("=", 1)[1]
            except psutil.Error:
                pass
        return ""

    # ---- cluster state -----------------------------------------------------

    def node_states(self) -> dict[str, bool]:
        """{node id hex: alive?} for every node the GCS knows, dead ones too."""
        from ray._raylet import GcsClient
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        if self._gcs is None:
            self._gcs = GcsClient(address=self.address)
        infos = self._gcs.get_all_node_info(timeout=5)
        return {nid.hex(): info.state == GcsNodeInfo.ALIVE for nid, info in infos.items()}

    def wait_node(self, node: RayNode, alive: bool, timeout: float | None = None) -> float:
        """Waits until the GCS reports `node` alive (or not); returns seconds waited."""
        start = time.monotonic()
        while True:
            try:
                state = self.node_states().get(node.node_id)
            except Exception:  # GCS not up yet
                state = None
            if state is not None and state == alive:
                return time.monotonic() - start
            if time.monotonic() - start > (timeout or self.timeout):
                raise TimeoutError(f"node {node.name} not {'alive' if alive else 'dead'}")
            time.sleep(0.05)

    # ---- killing -----------------------------------------------------------

    @staticmethod
    def _marked(prefix: str) -> list[psutil.Process]:
        """Live processes (not this one) whose _MARK or command line points
        into directory `prefix`."""
        found = []
        for p in psutil.process_iter(["cmdline", "environ"]):
            if p.pid == os.getpid() or _gone(p):
                continue
            mark = (p.info["environ"] or {}).get(_MARK, "")
            line = " ".join(p.info["cmdline"] or [])
            if mark == prefix or mark.startswith(prefix + "/") or prefix + "/" in line:
                found.append(p)
        return found

    def kill_node(self, node: RayNode) -> None:
        """SIGKILLs the node's `ray start`, raylet, agents and workers at
        once and waits until they are gone. The GCS notices within about a
        second (see `wait_node(node, alive=False)`)."""
        launcher = node.proc.pid
        for _ in range(5):
            # Collect first: a killed parent's children move to the launcher.
            procs = [p for p in self._tree(node) if p.pid != launcher]
            procs += [
                p for p in self._marked(str(node.temp_dir)) if p.pid != launcher and p not in procs
            ]
            if not procs:
                break
            for p in procs:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            deadline = time.monotonic() + 10
            while not all(_gone(p) for p in procs) and time.monotonic() < deadline:
                time.sleep(0.01)
        node.proc.kill()
        node.proc.wait()
        node.killed = True
        node.slot_claim.unlink(missing_ok=True)

    def stop(self) -> None:
        """Kills every process this cluster started and removes its files."""
        for node in reversed(self.nodes):
            if not node.killed:
                self.kill_node(node)
        leftovers = self._marked(str(self.root))
        for p in leftovers:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(leftovers, timeout=5)
        self._gcs = None
        self.address = ""
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_SELF_TEST_DRIVER = """
import asyncio, json, os, sys, time
import ray

ray.init(logging_level="ERROR", log_to_driver=False)

@ray.remote
class Slow:
    async def where(self):
        return ray.get_runtime_context().get_node_id(), os.getpid()

    async def work(self, seconds):
        await asyncio.sleep(seconds)
        return "finished"

def say(**kw):
    print(json.dumps(kw), flush=True)

actor = Slow.options(resources={"special": 1}).remote()
node, pid = ray.get(actor.where.remote(), timeout=60)
say(event="placed", node=node, pid=pid)

async def main():
    ref = actor.work.remote(300)
    say(event="awaiting")
    try:
        await ref
        say(event="result")
    except Exception as e:
        say(event="error", t=time.time(), cls=f"{type(e).__module__}.{type(e).__qualname__}",
            mro=[c.__name__ for c in type(e).__mro__], msg=str(e)[-300:])
    if len(sys.argv) > 1:  # retry on a fresh actor once a new node is up
        input()
        again = Slow.options(resources={"special": 1}).remote()
        node, _ = await asyncio.wait_for(again.where.remote(), 60)
        say(event="retried", node=node)

asyncio.run(main())
"""


def _self_test(env: dict[str, str] | None = None) -> None:
    """Starts 2 nodes, kills the one running a driver's actor, retries on a 3rd."""
    import threading

    def read(driver: subprocess.Popen[str]) -> dict[str, Any]:
        while line := driver.stdout.readline():  # type: ignore[union-attr]
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError("driver ended early")

    with RayCluster(env) as cluster:
        t = time.monotonic()
        address = cluster.start_head()
        print(f"start_head: {time.monotonic() - t:.2f}s -> {address}")
        t = time.monotonic()
        node = cluster.add_node(num_cpus=1, resources={"special": 2})
        print(f"add_node:   {time.monotonic() - t:.2f}s -> {node.node_id[:12]}")

        driver = subprocess.Popen(
            [sys.executable, "-c", _SELF_TEST_DRIVER, "retry"], env=cluster.driver_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        timer = threading.Timer(180, driver.kill)  # never hang the self-test
        timer.start()
        try:
            placed = read(driver)
            assert placed["node"] == node.node_id, placed
            actor = psutil.Process(placed["pid"])
            assert read(driver)["event"] == "awaiting"
            time.sleep(1.0)

            t0, t = time.time(), time.monotonic()
            cluster.kill_node(node)
            print(f"kill_node:  {time.monotonic() - t:.2f}s (actor process gone: {_gone(actor)})")
            cluster.wait_node(node, alive=False)
            print(f"GCS marks node dead: {time.monotonic() - t:.2f}s after the kill")
            error = read(driver)
            print(f"driver's await raised {error['cls']} {error['t'] - t0:.2f}s after the kill")
            print(f"  mro: {error['mro']}")
            print(f"  message tail: {error['msg']!r}")

            t = time.monotonic()
            node3 = cluster.add_node(resources={"special": 2})
            print(f"add_node (3rd): {time.monotonic() - t:.2f}s -> {node3.node_id[:12]}")
            driver.stdin.write("\n")  # type: ignore[union-attr]
            driver.stdin.flush()  # type: ignore[union-attr]
            retried = read(driver)
            assert retried["node"] == node3.node_id, retried
            print("new actor with {'special': 1} placed on the 3rd node")
            driver.wait(30)
        finally:
            timer.cancel()
            driver.kill()
            driver.wait()
        t = time.monotonic()
    print(f"stop: {time.monotonic() - t:.2f}s")
    print(f"harness processes left: {len(RayCluster._marked(str(cluster.root)))}")


if __name__ == "__main__":
    _self_test()
