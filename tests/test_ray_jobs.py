"""The jobs as users run them: `ray job submit` from the repository to a real Ray head, with the
run's inputs and outputs on a real S3 API.

Both services listen on 127.0.0.1 only (tests/cluster_fixtures.py). The submit command is
the one in docs/cluster.md, with this machine's head address; the data and the
model are referenced by s3:// URI or absolute path, never uploaded. One submitted run
serves the Jobs API checks, the object-storage checks and the evaluation read-back: each
job costs tens of seconds of actor start-up on a 2-core machine.
"""

import json
import os
import subprocess
from dataclasses import dataclass

import pyarrow.fs as pafs
import pytest
import yaml

from chatrec.publish import read_latest
from tests.cluster_fixtures import BIN, REPO, S3Server, ray_head, s3_bucket
from tests.conftest import make_toy_catalogue, write_parquet
from tests.test_pipeline import recs_by_user

pytestmark = pytest.mark.slow

BUCKET = "chatrec"
OUTPUT = f"s3://{BUCKET}/recommendations"
RUN_DIR = f"{OUTPUT}/runs/s3run"


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    # The Jobs API client in this process talks to a head without token auth, as
    # tests/conftest.py's in-process Ray does.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with ray_head(tmp_path_factory.mktemp("ray-head")) as running:
        yield running


def submit(head, submission_id: str, *entrypoint: str, env_vars: dict | None = None) -> subprocess.CompletedProcess:
    """`ray job submit` from the repository root, as docs/cluster.md shows it."""
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", **(env_vars or {})}}
    command = [
        str(BIN / "ray"), "job", "submit", "--address", head.address, "--working-dir", ".",
        "--runtime-env-json", json.dumps(runtime_env), "--submission-id", submission_id,
        "--", *entrypoint,
    ]
    return subprocess.run(command, cwd=REPO, env=head.env, capture_output=True, text=True, timeout=600)


def job_record(head, submission_id: str):
    """The job's info and its log lines, from the Jobs API."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.address)
    return client.get_job_info(submission_id), client.get_job_logs(submission_id).strip().splitlines()


def write_config(path, **sections) -> str:
    path.write_text(yaml.safe_dump(sections))
    return str(path)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A bucket on moto's S3 server; this process reads and writes it like any S3."""
    with s3_bucket(tmp_path_factory.mktemp("s3"), BUCKET) as server:
        yield server


@dataclass(frozen=True)
class Submitted:
    done: subprocess.CompletedProcess
    info: object  # ray.job_submission.JobDetails
    log: list[str]


@pytest.fixture(scope="module")
def s3_run(head, s3: S3Server, tiny_model_dir, tmp_path_factory) -> Submitted:
    """The toy catalogue uploaded to the bucket, and jobs.full_run submitted on it."""
    import boto3

    tmp = tmp_path_factory.mktemp("s3-run")
    client = boto3.client("s3")
    paths = make_toy_catalogue(tmp)
    client.upload_file(str(paths["items"]), BUCKET, "catalogue/items.parquet")
    client.upload_file(str(paths["interactions"]), BUCKET, "events/part-0.parquet")
    config = write_config(
        tmp / "s3.yaml",
        inputs={"items": f"s3://{BUCKET}/catalogue/items.parquet", "interactions": f"s3://{BUCKET}/events/"},
        encoder={"model": str(tiny_model_dir), "max_length": 32},
        retrieval={"top_k": 3},
        output={"path": OUTPUT},
        # Ray Train inside a submitted job is covered by the matcher tests; here the job,
        # the upload and the object store are under test.
        matcher={"enabled": False},
    )
    # The endpoint and credentials reach the driver and every worker through runtime_env.
    done = submit(head, "chatrec-s3", "python", "-m", "jobs.full_run", "--config", config, "--run-id", "s3run",
                  env_vars=s3.env)
    info, log = job_record(head, "chatrec-s3")
    return Submitted(done, info, log)


def test_full_run_submitted_through_the_jobs_api_succeeds(s3_run):
    assert s3_run.done.returncode == 0, s3_run.done.stdout[-3000:] + s3_run.done.stderr[-3000:]
    assert s3_run.info.status == "SUCCEEDED"
    # The code came as an uploaded package, not as a path on this machine.
    assert s3_run.info.runtime_env["working_dir"].startswith("gcs://_ray_pkg_")
    summary = json.loads(s3_run.log[-1])
    assert summary["job"] == "jobs.full_run" and summary["status"] == "succeeded"
    assert summary["run_id"] == "s3run" and summary["run_dir"] == summary["latest"] == RUN_DIR
    assert summary["outputs"]["recommendations"] == 4 * 3
    assert summary["users"]["covered"] == 4
    # The published run holds the known answers.
    recs = recs_by_user(RUN_DIR)
    assert recs["u1"][0]["item_id"] == "a2" and recs["u2"][0]["item_id"] == "b2"


def test_the_run_on_s3_is_committed_by_latest_written_last(s3_run, s3):
    import boto3

    client = boto3.client("s3")
    assert read_latest(OUTPUT) == RUN_DIR
    assert client.get_object(Bucket=BUCKET, Key="recommendations/LATEST")["Body"].read() == b"runs/s3run\n"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="recommendations/")["Contents"]}
    for table in ("recommendations", "item_embeddings", "user_embeddings", "rejects"):
        assert any(k.startswith(f"recommendations/runs/s3run/{table}/") and k.endswith(".parquet") for k in keys)
    assert not any("/_work/" in k for k in keys)  # the intermediate tables are gone
    # The order the S3 server took the writes in: every table, then the manifest, then LATEST.
    writes = s3.writes(f"/{BUCKET}/recommendations/")
    assert writes[-1] == f"/{BUCKET}/recommendations/LATEST"
    assert writes[-2] == f"/{BUCKET}/recommendations/runs/s3run/manifest.json"


def test_evaluate_reads_the_run_back_from_s3(s3_run, tmp_path):
    import boto3

    from jobs.evaluate import main as evaluate

    test_log = write_parquet(tmp_path / "test.parquet", {"user_id": ["u1", "u2"], "item_id": ["a2", "b2"], "timestamp": [300, 300]})
    boto3.client("s3").upload_file(str(test_log), BUCKET, "splits/test.parquet")

    assert evaluate(["--run", OUTPUT, "--test", f"s3://{BUCKET}/splits/test.parquet", "--k", "1"]) == 0
    fs, path = pafs.FileSystem.from_uri(f"{RUN_DIR}/evaluation.json")
    with fs.open_input_stream(path) as f:
        evaluation = json.loads(f.read())
    # u1's and u2's held-out items are the twins of what they saw: both hit at rank 1.
    assert evaluation["run_id"] == "s3run" and evaluation["metrics"]["hit@1"] == pytest.approx(1.0)


def test_a_failed_job_says_why_in_one_line(head, tmp_path):
    config = write_config(tmp_path / "bad.yaml", inputs={"items": "a", "interactions": "b"}, retreival={})

    done = submit(head, "chatrec-bad-config", "python", "-m", "jobs.full_run", "--config", config)

    assert done.returncode == 1  # what `ray job submit` returns for a failed job
    info, log = job_record(head, "chatrec-bad-config")
    assert info.status == "FAILED" and "exit code 2" in info.message
    summary = json.loads(log[-1])
    assert summary["status"] == "failed" and summary["exit_code"] == 2
    assert "unknown key 'retreival'" in summary["error"]
    assert log[-2] == f"jobs.full_run: error: {summary['error']}"
