"""Connect to Ray, read the cluster's resources once, and size the actor pools from them.

On a laptop `connect` starts a local Ray (the embedded default). With RAY_ADDRESS set, under
`ray job submit`, or with `ray.address` in the config, the same code joins that cluster.
GPU/CPU decisions are made here, from these numbers, and nowhere else.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

import ray

from chatrec import faults
from chatrec.config import EncoderConfig, MatcherConfig, RayConfig, RerankConfig, RetrievalConfig
from chatrec.errors import ClusterError, ConfigError

logger = logging.getLogger(__name__)

# BERT-style encoders stop scaling with intra-op threads at about 4 on CPU; past that,
# more actors of 4 threads each use the cores better than fewer, wider actors.
MAX_THREADS_PER_CPU_ACTOR = 4


@dataclass(frozen=True)
class ClusterResources:
    cpus: int
    gpus: int
    nodes: int
    max_cpus_per_node: int


@dataclass(frozen=True)
class ActorPlan:
    """How one stage's actor pool is laid out."""

    num_actors: int
    num_cpus: float  # Ray's CPU reservation per actor
    num_gpus: float
    threads: int | None  # torch / FAISS threads per CPU actor
    device: Literal["cpu", "cuda"]

    def describe(self) -> str:
        kind = f"{self.num_gpus:g} GPU" if self.num_gpus else f"{self.threads} threads"
        return f"{self.num_actors} actor(s) x {kind} ({self.device})"


def connect(cfg: RayConfig) -> ClusterResources:
    """Join (or start) Ray and read its resources."""
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            _check_reachable(address)
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING, runtime_env=faults.runtime_env())
            else:
                start_local_ray(cfg.num_cpus)
        except Exception as e:  # Ray's own errors here are bare Exception, ConnectionError, TimeoutError...
            where = f"join the Ray cluster at {address}" if address else "start a local Ray"
            raise ClusterError(f"could not {where}: {type(e).__name__}: {e}") from e
    configure_ray_data()
    return cluster_resources()


def start_local_ray(num_cpus: int | None) -> None:
    """Start a local Ray (the laptop default) that its own processes can find.

    Its GCS gets a port chosen here, and every process it starts inherits RAY_ADDRESS naming
    it: Ray's helpers that look a cluster up (Ray Train's placement-group cleaner) would
    otherwise scan for running Rays and find several when another job or a test suite runs
    beside this one. A reaper process outside the job's process group kills the Ray's workers
    when the driver dies (`start_reaper`): a job killed with its process group leaves no
    worker behind.
    """
    port = _free_port()
    own = f"{ray.util.get_node_ip_address()}:{port}"
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    os.environ.update(RAY_ADDRESS=own, RAY_GCS_SERVER_PORT=str(port))
    try:
        ray.init(address="local", logging_level=logging.WARNING, **({"num_cpus": num_cpus} if num_cpus else {}))
    finally:  # only Ray's processes keep them: a later connect in this process must not join a stopped Ray
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    start_reaper(ray.get_runtime_context().get_node_id())


# Waits for the driver to die, then SIGKILLs every process of its Ray node (their command
# lines name the node), for a few seconds: workers still starting then are caught too.
_REAPER = r"""
import os, signal, sys, time
driver, marks = int(sys.argv[1]), [m.encode() for m in sys.argv[2:]]
while True:
    try:
        os.kill(driver, 0)
    except ProcessLookupError:
        break
    except PermissionError:
        pass
    time.sleep(0.2)
for _ in range(25):
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if any(m in f.read() for m in marks):
                        os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
    time.sleep(0.2)
"""


def start_reaper(node_id: str) -> None:
    """Ray's workers run in process groups of their own, so a kill -9 of the job's group
    misses them, and a worker can take tens of seconds to notice its raylet is gone (one
    still starting, longer). The reaper runs in a session of its own and ends with the job."""
    if not sys.platform.startswith("linux"):
        return
    subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid()), f"--node-id={node_id}",
                      f"--node_id={node_id}"], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A host:port that nothing answers on is refused here: Ray itself retries for a minute
    or more and then ends the process without an exception."""
    if "://" in address or address in ("auto", "local") or ":" not in address:
        return  # ray:// (Ray Client) and "auto" are Ray's to resolve
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise ClusterError(f"could not join the Ray cluster at {address}: nothing answers there ({e}); "
                           "check ray.address / RAY_ADDRESS and that the cluster is up") from e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def configure_ray_data() -> None:
    ctx = ray.data.DataContext.get_current()
    # Progress bars garble non-TTY logs (`ray job submit`, schedulers): plain lines there.
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.print_on_execution_start = False
    # Keep rows in their input order so the same inputs write the same files.
    ctx.execution_options.preserve_order = True


def cluster_resources() -> ClusterResources:
    total = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    per_node = [int(n.get("Resources", {}).get("CPU", 0)) for n in alive] or [int(total.get("CPU", 1))]
    return ClusterResources(
        cpus=int(total.get("CPU", 1)),
        gpus=int(total.get("GPU", 0)),
        nodes=max(len(alive), 1),
        max_cpus_per_node=max(max(per_node), 1),
    )


def _cpu_threads(requested: int | Literal["auto"], res: ClusterResources) -> int:
    if requested == "auto":
        return max(1, min(res.max_cpus_per_node, MAX_THREADS_PER_CPU_ACTOR))
    if requested > res.max_cpus_per_node:
        raise ConfigError(
            f"encoder.cpus_per_actor is {requested} but the largest node has {res.max_cpus_per_node} CPUs"
        )
    return requested


def _cpu_pool(requested_actors: int | Literal["auto"], threads: int, res: ClusterResources) -> ActorPlan:
    """CPU actors that never reserve every CPU of the cluster.

    Ray Data runs its read, list and write steps as tasks needing a CPU each; a pool that
    reserves all CPUs starves them and the dataset hangs. So the pool's reservation leaves
    one CPU free, while each actor still runs `threads` torch/FAISS threads (on a 2-core
    laptop: one actor reserving 1 CPU and computing on 2; the light I/O tasks share).
    """
    spare = max(res.cpus - 1, 1)
    n = max(1, spare // threads) if requested_actors == "auto" else requested_actors
    reserve = min(float(threads), max(spare / n, 0.5) if res.cpus > 1 else 0.5)
    return ActorPlan(num_actors=n, num_cpus=reserve, num_gpus=0, threads=threads, device="cpu")


def _use_gpu(requested: Literal["auto", "cpu", "gpu"], res: ClusterResources, key: str) -> bool:
    if requested == "gpu" and res.gpus == 0:
        raise ConfigError(f"{key} is 'gpu' but the Ray cluster has no GPUs; use 'auto' or 'cpu'")
    return requested == "gpu" or (requested == "auto" and res.gpus > 0)


def encoder_plan(cfg: EncoderConfig, res: ClusterResources) -> ActorPlan:
    if _use_gpu(cfg.device, res, "encoder.device"):
        n = res.gpus if cfg.num_actors == "auto" else cfg.num_actors
        return ActorPlan(num_actors=n, num_cpus=1, num_gpus=1, threads=None, device="cuda")
    return _cpu_pool(cfg.num_actors, _cpu_threads(cfg.cpus_per_actor, res), res)


def encoder_precision(cfg: EncoderConfig, plan: ActorPlan) -> Literal["fp32", "fp16", "bf16"]:
    if cfg.precision != "auto":
        if cfg.precision != "fp32" and plan.device == "cpu":
            raise ConfigError(f"encoder.precision {cfg.precision!r} needs GPU actors; CPU encoding is fp32")
        return cfg.precision
    return "fp16" if plan.device == "cuda" else "fp32"


def faiss_has_gpu_support() -> bool:
    """Whether the installed faiss is a GPU build (the driver's image is the workers')."""
    import faiss

    return hasattr(faiss, "StandardGpuResources")


def retrieval_plan(cfg: RetrievalConfig, res: ClusterResources) -> ActorPlan:
    """Top-K actors: a FAISS GPU index when the cluster has GPUs and faiss is a GPU build."""
    use_gpu = _use_gpu(cfg.backend, res, "retrieval.backend")
    if use_gpu and not faiss_has_gpu_support():
        if cfg.backend == "gpu":
            raise ConfigError("retrieval.backend is 'gpu' but faiss-cpu is installed; install the gpu extra (faiss-gpu)")
        logger.warning("the cluster has GPUs but faiss is a CPU build: top-K runs on CPU actors")
        use_gpu = False
    if use_gpu:
        n = res.gpus if cfg.num_actors == "auto" else cfg.num_actors
        return ActorPlan(num_actors=n, num_cpus=1, num_gpus=1, threads=None, device="cuda")
    return _cpu_pool(cfg.num_actors, _cpu_threads("auto", res), res)


def user_plan(res: ClusterResources) -> ActorPlan:
    """User-tower actors: the recency-weighted mean is a numpy gather, CPU work."""
    return _cpu_pool("auto", _cpu_threads("auto", res), res)


def rerank_plan(cfg: RerankConfig, res: ClusterResources) -> ActorPlan:
    """Language-model actors of the rerank stage's hf engine: one per GPU with GPUs; on CPU,
    sized like the encoder's pool (a causal LM's matmuls scale with threads as BERT's do)."""
    if _use_gpu(cfg.device, res, "rerank.device"):
        n = res.gpus if cfg.num_actors == "auto" else cfg.num_actors
        return ActorPlan(num_actors=n, num_cpus=1, num_gpus=1, threads=None, device="cuda")
    return _cpu_pool(cfg.num_actors, _cpu_threads("auto", res), res)


def trainer_plan(cfg: MatcherConfig, res: ClusterResources) -> ActorPlan:
    """Ray Train workers: one per GPU with GPUs; on CPU one worker using a node's cores."""
    if _use_gpu(cfg.device, res, "matcher.device"):
        n = res.gpus if cfg.num_workers == "auto" else cfg.num_workers
        return ActorPlan(num_actors=n, num_cpus=1, num_gpus=1, threads=None, device="cuda")
    threads = _cpu_threads("auto", res)
    n = 1 if cfg.num_workers == "auto" else cfg.num_workers
    return _cpu_pool(n, max(1, threads // n), res)
