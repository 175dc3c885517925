"""Real services on loopback for the cluster tests: a Ray head with its Jobs API, and an S3 API.

Both run as child processes of the test session on free ports, and are stopped by their own
process ids, so they never touch another Ray or S3 on the machine (not even the session's
in-process `ray_cluster`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: `ray`, `moto_server`, and `python` for job entrypoints
HOST = "127.0.0.1"
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def _stop(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the process we started, then SIGKILL its process group if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    # The group is the one `start_new_session` made for this process alone.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@dataclass(frozen=True)
class RayHead:
    address: str  # the Jobs API, as `ray job submit --address` takes it
    env: dict[str, str]  # what the `ray` CLI needs to talk to this head


def ray_head_env() -> dict[str, str]:
    # RAY_AUTH_MODE=disabled: the test neither reads nor creates ~/.ray/auth_token.
    # PATH: the job's `python` is this venv's.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    return env


@contextmanager
def ray_head(tmp: Path, num_cpus: int = 2) -> Iterator[RayHead]:
    """`ray start --head` on 127.0.0.1 with the dashboard and Jobs API, stopped on exit.

    Its own --temp-dir keeps its session files, and the address file that a bare
    `ray.init()` would follow, away from /tmp/ray. `--block` keeps `ray start` in the
    foreground: SIGTERM to it stops this head's processes and no other Ray's; `ray stop`
    would stop every Ray on the machine.
    """
    env = ray_head_env()
    dashboard = free_port()
    temp_dir = Path(f"/tmp/chatrec-rayhead-{os.getpid()}-{dashboard}")  # short: Ray's socket paths are capped
    log = tmp / "ray-head.log"
    command = [
        str(BIN / "ray"), "start", "--head", "--block",
        f"--node-ip-address={HOST}", f"--port={free_port()}",
        f"--dashboard-host={HOST}", f"--dashboard-port={dashboard}",
        f"--num-cpus={num_cpus}", "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        # Fixed ports otherwise default to the same numbers in every Ray on the machine.
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
    ]
    # No drain on SIGTERM: Ray would otherwise wait up to 30 s for work a test head never has.
    head_env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    with log.open("w") as out:
        process = subprocess.Popen(command, env=head_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://{HOST}:{dashboard}"
        _wait_until_up(f"{address}/api/version", process, log)
        yield RayHead(address=address, env=env)
    finally:
        _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    recording: Path  # every request the server handled, in order (moto's recorder)

    @property
    def env(self) -> dict[str, str]:
        """What pyarrow, fsspec and boto3 read: the endpoint and dummy credentials.
        AWS_EC2_METADATA_DISABLED: never ask the instance-metadata address for credentials."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def writes(self, prefix: str) -> list[str]:
        """Paths (/bucket/key) of the object writes under `prefix`, in the order the server took them."""
        paths = []
        for line in self.recording.read_text().splitlines():
            entry = json.loads(line)
            path = urlparse(entry["url"]).path
            if entry["method"] == "PUT" and path.startswith(prefix) and not path.endswith("/"):
                paths.append(path)
        return paths


@contextmanager
def s3_server(tmp: Path) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1, recording every request; stopped on exit."""
    port = free_port()
    log = tmp / "moto.log"
    recording = tmp / "moto-recording.jsonl"
    env = {**os.environ, "MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(recording)}
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", HOST, "-p", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        endpoint = f"http://{HOST}:{port}"
        _wait_until_up(f"{endpoint}/moto-api/", process, log)
        yield S3Server(endpoint=endpoint, recording=recording)
    finally:
        _stop(process, grace_s=5)


@contextmanager
def s3_bucket(tmp: Path, bucket: str) -> Iterator[S3Server]:
    """`s3_server` with this process's S3 clients pointed at it and `bucket` created."""
    import boto3
    import pytest

    with s3_server(tmp) as server, pytest.MonkeyPatch.context() as env:
        for key, value in server.env.items():
            env.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield server


@dataclass
class FaultyS3:
    """A proxy in front of an S3 server that fails a share of requests: 503 SlowDown (which
    clients retry) or a connection dropped without an answer."""

    endpoint: str
    failed: int = 0
    forwarded: int = 0


@contextmanager
def faulty_s3(upstream: str, *, share: float, seed: int = 0) -> Iterator[FaultyS3]:
    import http.client
    import random
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    rng, lock = random.Random(seed), threading.Lock()
    target = urlparse(upstream)
    state = FaultyS3(endpoint="")

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _handle(self) -> None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        break
                    body += self.rfile.read(size)
                    self.rfile.readline()
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                fail = rng.random() < share
                kind = rng.choice(["503", "drop"]) if fail else None
            if kind == "drop":
                state.failed += 1
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if kind == "503":
                state.failed += 1
                error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(error)))
                self.end_headers()
                self.wfile.write(error)
                return
            state.forwarded += 1
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("connection", "transfer-encoding", "content-length")}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
            self.send_response(answer.status, answer.reason)
            head = self.command == "HEAD"  # its Content-Length is the object's: passed on, no body
            for key, value in answer.getheaders():
                if key.lower() not in ("connection", "transfer-encoding") and (head or key.lower() != "content-length"):
                    self.send_header(key, value)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    server = ThreadingHTTPServer((HOST, 0), Proxy)
    state.endpoint = f"http://{HOST}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
