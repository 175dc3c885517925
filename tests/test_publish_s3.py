"""Publishing and reading on object storage, against moto's S3 server on 127.0.0.1.

On an object store a rename is a copy, so a run is written in place and LATEST is the
commit: these check that contract, and that locations resolve there as they do locally.
"""

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from chatrec import schemas
from chatrec.errors import PublishError
from chatrec.publish import RunOutput, add_run_file, read_latest
from chatrec.sources import resolve_files
from tests.cluster_fixtures import faulty_s3, s3_bucket

BUCKET = "publish"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_bucket(tmp_path_factory.mktemp("s3"), BUCKET) as server:
        yield server


def recommendations(run_id: str) -> pa.Table:
    return pa.Table.from_pylist(
        [{"user_id": "u1", "rank": 1, "item_id": "a", "score": 1.0, "because_item_id": None,
          "reason": "test", "strategy": "content", "run_id": run_id}],
        schema=schemas.RECOMMENDATIONS,
    )


def test_a_run_becomes_visible_only_when_latest_is_written(s3):
    root = f"s3://{BUCKET}/out"
    run = RunOutput(root, "r1")
    run.prepare()
    run.write_table("recommendations", recommendations("r1"))
    run.write_json("manifest.json", {"run_id": "r1"})
    # Written in place (no staging copy on an object store), but not committed yet.
    assert run.path("recommendations") == f"{root}/runs/r1/recommendations"
    assert read_latest(root) is None
    # The driver reads a staged table back through the run's own filesystem.
    assert run.dataset("recommendations").to_table().equals(recommendations("r1"))
    assert run.count_rows("recommendations") == 1

    run.commit()
    assert read_latest(root) == f"{root}/runs/r1" == run.published_path()
    with pytest.raises(PublishError, match="already published"):
        RunOutput(root, "r1").prepare()


def test_a_failed_attempt_is_cleared_and_latest_left_alone(s3):
    root = f"s3://{BUCKET}/retry"
    done = RunOutput(root, "r1")
    done.prepare()
    done.write_json("manifest.json", {"run_id": "r1"})
    done.commit()
    crashed = RunOutput(root, "r2")
    crashed.prepare()
    crashed.write_table("recommendations", recommendations("r2"))  # then the job died

    assert read_latest(root) == f"{root}/runs/r1"
    again = RunOutput(root, "r2")
    again.prepare()  # not resumable (no configuration given): the partial output is not reused
    assert again.count_rows("recommendations") is None


def test_an_interrupted_attempt_resumes_from_its_markers(s3):
    root = f"s3://{BUCKET}/resume"
    first = RunOutput(root, "r1")
    assert first.prepare(config_sha256="c1") == []
    first.write_table("item_embeddings", recommendations("r1"))
    first.mark_complete("embed-items", {"embedded": 1})
    first.write_table("recommendations", recommendations("r1"))  # then the job died mid-stage

    again = RunOutput(root, "r1")
    assert again.prepare(config_sha256="c1") == ["embed-items"]
    assert again.stage_record("embed-items") == {"embedded": 1}
    again.reset("recommendations")  # the unfinished stage starts over
    assert again.count_rows("recommendations") is None
    assert again.count_rows("item_embeddings") == 1
    with pytest.raises(PublishError, match="another configuration"):
        RunOutput(root, "r1").prepare(config_sha256="c2")
    again.write_json("manifest.json", {"run_id": "r1"})
    again.commit()
    assert read_latest(root) == f"{root}/runs/r1"
    assert again.completed_stages() == []  # the markers are not published


def test_locations_resolve_on_s3_as_locally(s3):
    import boto3

    client = boto3.client("s3")
    for key in ("in/b.parquet", "in/a.parquet", "in/_SUCCESS", "in/sub/.hidden.csv", "in/sub/c.csv", "in/notes.txt"):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x")

    listed = resolve_files(f"s3://{BUCKET}/in/")
    assert listed.display == tuple(f"s3://{BUCKET}/in/{n}" for n in ("a.parquet", "b.parquet", "sub/c.csv"))
    assert resolve_files(f"s3://{BUCKET}/in/*.parquet").paths == (f"{BUCKET}/in/a.parquet", f"{BUCKET}/in/b.parquet")


def test_derived_files_are_added_to_a_published_run(s3):
    import boto3

    run_dir = f"s3://{BUCKET}/out/runs/r1"
    assert add_run_file(run_dir, "evaluation.json", b"{}") == f"{run_dir}/evaluation.json"
    assert boto3.client("s3").get_object(Bucket=BUCKET, Key="out/runs/r1/evaluation.json")["Body"].read() == b"{}"


def _publish(root: str, run_id: str) -> None:
    """One attempt of a run's writes on the object store, as the job makes them."""
    run = RunOutput(root, run_id)
    run.prepare(config_sha256="c")
    if "write" not in run.completed_stages():
        run.reset("recommendations")
        run.write_table("recommendations", recommendations(run_id))
        run.mark_complete("write", {"rows": 1})
    run.write_json("manifest.json", {"run_id": run_id})
    run.commit()


def _latest_is_whole(root: str) -> str | None:
    """What LATEST names, checked complete (read straight from the server)."""
    latest = read_latest(root)
    if latest is not None:
        run_id = latest.rsplit("/", 1)[1]
        run = RunOutput(root, run_id)
        assert run.published_manifest()["run_id"] == run_id
        assert pads.dataset(f"{latest.split('://', 1)[1]}/recommendations", filesystem=run.fs).to_table().equals(
            recommendations(run_id))
    return latest


@pytest.mark.parametrize("share", [0.5])
def test_a_failing_object_store_never_shows_a_half_published_run(s3, monkeypatch, share):
    """A share of the server's answers are 503s or dropped connections: each attempt either
    publishes or fails with an error, LATEST never names a partial run, and attempts of the
    same run id end published."""
    root = f"s3://{BUCKET}/faulty-{int(share * 100)}"
    outcomes = []
    with faulty_s3(s3.endpoint, share=share, seed=int(share * 100)) as proxy:
        for run_id in ("r1", "r2", "r3"):
            for _ in range(12):
                monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
                try:
                    _publish(root, run_id)
                    outcomes.append("published")
                except (OSError, PublishError) as e:
                    outcomes.append(type(e).__name__)
                    assert str(e)
                monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
                latest = _latest_is_whole(root)
                if latest is not None and latest.endswith(f"runs/{run_id}"):
                    break
            assert _latest_is_whole(root) == f"{root}/runs/{run_id}", outcomes
    assert proxy.failed > 0 and "published" in outcomes
