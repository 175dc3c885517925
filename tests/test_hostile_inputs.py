"""Inputs and situations that once ended in a traceback, a wrong message or a silent
mistake, each with the outcome the contract promises (docs/inputs.md, "Input contract";
docs/cli.md, "Exit codes")."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from rich.console import Console

from chatrec.catalogue import DISPLAY_CHARS, build_catalogue
from chatrec.cli import main
from chatrec.config import TableInput
from chatrec.errors import InputDataError
from chatrec.item_text import render_item_text
from chatrec.readers import read_table
from chatrec.sources import filesystem_for
from chatrec.summary import print_summary
from chatrec.validation import validate_interactions, validate_items
from tests.conftest import write_parquet

REPO = Path(__file__).resolve().parent.parent


def _log(path: Path, timestamps: pa.Array) -> Path:
    n = len(timestamps)
    return write_parquet(path, {"user_id": ["u"] * n, "item_id": ["a"] * n, "timestamp": timestamps})


@pytest.mark.parametrize("timestamps", [
    pa.array([1e20, 5.0, -1e19]),
    pa.array(["1e20", "5", "100000000000000000000"]),
    pa.array([1_600_000_000_000, 5, 2**63 - 1], pa.int64()),  # milliseconds, and the largest int64
    pa.array([2**64 - 1, 5, 2**63], pa.uint64()),
])
def test_a_timestamp_outside_years_1_to_9999_is_a_reject_not_a_crash(tmp_path, timestamps):
    path = _log(tmp_path / "log.parquet", timestamps)
    v = validate_interactions(read_table(TableInput(path=str(path)), id_columns=("user_id", "item_id")),
                              location=str(path), item_ids=pa.array(["a"]))
    assert v.table.column("timestamp").to_pylist() == [5]
    reasons = v.rejects.column("reason").to_pylist()
    assert [r.split(":")[0] for r in reasons] == ["timestamp out of range"] * 2
    assert v.rejects.column("row").to_pylist() == [1, 3]


def test_invalid_utf8_in_a_csv_names_its_row_and_says_so(tmp_path):
    path = tmp_path / "items.csv"
    path.write_bytes(b"item_id,title\n1,One\n2,Two\n3,Three\n4,Bad \xff\xfe title\n5,Five\n")
    with pytest.raises(InputDataError, match=r"column 'title', row 4: invalid UTF-8"):
        read_table(TableInput(path=str(path)), id_columns=("item_id",))
    ids = tmp_path / "log.csv"
    ids.write_bytes(b"user_id,item_id,timestamp\nu1,1,5\nu\xe92,1,6\n")
    with pytest.raises(InputDataError, match=r"column 'user_id', row 2: invalid UTF-8"):
        read_table(TableInput(path=str(ids)), id_columns=("user_id", "item_id"))


def _items(path: Path, **columns) -> pa.Table:
    write_parquet(path, {"item_id": ["a", "b"], **columns})
    raw = read_table(TableInput(path=str(path)), id_columns=("item_id",))
    return validate_items(raw, location=str(path), attributes=None, categories_delimiter="|").table


def test_a_year_of_floats_reads_as_a_whole_year(tmp_path):
    items = _items(tmp_path / "items.parquet", title=["Borrowed Time", "Later"], year=[1995.0, None],
                   rating=[4.0, 3.5])
    text = render_item_text(items, None).column("text").to_pylist()
    assert "Borrowed Time (1995)" in text[0] and "1995.0" not in text[0]
    assert "rating: 4.0" not in text[0] and "rating: 4" in text[0] and "rating: 3.5" in text[1]


def test_numbered_titles_are_text(tmp_path):
    # docs/inputs.md: a title of numbers (a catalogue of "1984", "2012") is taken as its text.
    items = _items(tmp_path / "items.parquet", title=pa.array([1984, 2012], pa.int64()))
    assert items.column("title").to_pylist() == ["1984", "2012"]
    items = _items(tmp_path / "floats.parquet", title=[1984.0, 2.5])
    assert items.column("title").to_pylist() == ["1984", "2.5"]


def test_a_huge_title_is_clipped_where_it_is_shown(tmp_path):
    huge = "Long " * 200_000  # 1 MiB
    items = _items(tmp_path / "items.parquet", title=[huge, "[/bold] not markup"])
    catalogue = build_catalogue(items, np.ones((2, 4), np.float32))
    assert len(catalogue.display_titles[0]) == DISPLAY_CHARS and catalogue.display_titles[0].endswith("…")
    manifest = {
        "run_id": "r", "stages": [], "wall_seconds": 1.0, "top_k": 1,
        "inputs": {"items": {"valid": 2, "rows": 2}, "interactions": {"valid": 0, "rows": 0}},
        "rejects": {"total": 0, "by_reason": {}}, "users": {"covered": 1, "with_history": 0, "popularity_fallback": 1},
        "outputs": {"recommendations": 2},
        "examples": [{"user_id": "[/u]", "items": [
            {"rank": 1, "item_id": "a", "title": huge, "score": 1.0, "reason": "because of " + huge},
            {"rank": 2, "item_id": "b", "title": catalogue.display_titles[1], "score": 0.5, "reason": "[/x]"}]}],
    }
    out = io.StringIO()
    print_summary(manifest, "/out", Console(file=out, width=200, markup=False))
    printed = out.getvalue()
    assert len(printed) < 20_000 and "[/bold] not markup" in printed


def test_an_output_that_is_a_file_or_not_writable_is_refused_with_exit_4(tmp_path, capsys):
    items = write_parquet(tmp_path / "items.parquet", {"item_id": ["a"], "title": ["A"]})
    log = _log(tmp_path / "log.parquet", pa.array([1]))
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for output in (a_file, a_file / "below", Path("/sys/chatrec-test-output")):
        code = main(["run", "--items", str(items), "--interactions", str(log), "--output", str(output)])
        assert code == 4, output
        assert f"output location {output} refused" in capsys.readouterr().err
    assert a_file.read_text() == "not a directory"


def test_an_s3_location_that_cannot_be_reached_says_why_not_that_s3fs_is_missing():
    uri = "s3://chatrec-test-no-such-bucket-4b1d/items.parquet"
    try:
        filesystem_for(uri)
    except InputDataError as e:
        assert uri in str(e) and "s3fs" not in str(e)
        if "resolving region" in str(e):
            assert "AWS_DEFAULT_REGION" in str(e)
    else:
        pytest.skip("this machine reaches S3 and resolves the bucket's region: the failure checked here cannot arise")


SCRIPT = r"""
import json, os, sys
import ray
from chatrec.config import load_config, RayConfig
from chatrec.errors import InputDataError
from chatrec.runtime import connect
from pipelines.full_run import run_job

cfg = load_config(None, {"inputs": {"items": sys.argv[1], "interactions": sys.argv[2]},
                         "output": {"path": sys.argv[3]}, "encoder": {"model": sys.argv[4]}})
try:
    run_job(cfg)
except InputDataError as e:
    bad_input, ray_started_for_it = str(e), ray.is_initialized()
connect(RayConfig(num_cpus=1))


@ray.remote
def inside():
    return os.environ.get("RAY_ADDRESS")


print(json.dumps({"bad_input": bad_input, "ray_started_for_it": ray_started_for_it,
                  "workers_see": ray.get(inside.remote()), "own": ray.get_runtime_context().gcs_address,
                  "driver_env": os.environ.get("RAY_ADDRESS")}))
"""


def test_bad_input_is_reported_before_ray_starts_and_a_local_ray_knows_its_own_address(tmp_path, tiny_model_dir):
    items = write_parquet(tmp_path / "items.parquet", {"item_id": ["a"], "name": ["no title column"]})
    log = _log(tmp_path / "log.parquet", pa.array([1]))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(items), str(log), str(tmp_path / "out"),
                           str(tiny_model_dir)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "items table has no 'title' column" in result["bad_input"]
    assert result["ray_started_for_it"] is False
    # Ray's processes find their own cluster (not another one running beside it)...
    assert result["workers_see"] == result["own"]
    # ...and the driver's environment is left as it was.
    assert result["driver_env"] is None


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130_saying_interrupted(ray_cluster, tiny_model_dir, tmp_path):
    from tests.test_refresh import catalogue, config, interaction_log, write_inputs

    items = catalogue(3)
    write_inputs(tmp_path / "data", items, interaction_log(items, 3))
    cfg = config(tmp_path / "data", tmp_path / "out", tiny_model_dir,
                 matcher={"enabled": True, "max_epochs": 500, "patience": 500, "batch_size": 32},
                 ray={"address": ray_cluster.get_runtime_context().gcs_address})
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "chatrec.cli", "run", "--config", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    # Ray Train's controller logs this once trainer.fit() has started the training workers: the
    # job is inside train-matcher, training under way, with 500 epochs to go when the SIGINT lands.
    for line in proc.stderr:
        seen.append(line)
        if "Started training worker group" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen)[-2000:] + rest[-2000:]
    assert "chatrec: interrupted; nothing was published" in rest
    assert not (tmp_path / "out" / "LATEST").exists()
    log = "".join(seen) + rest  # the SIGINT landed inside train-matcher
    assert "[train-matcher] started" in log and "[train-matcher] done" not in log


def test_a_cluster_address_nothing_answers_at_is_refused_at_once():
    from chatrec.errors import ClusterError
    from chatrec.runtime import _check_reachable
    from tests.cluster_fixtures import free_port

    closed = f"127.0.0.1:{free_port()}"
    with pytest.raises(ClusterError, match=f"could not join the Ray cluster at {closed}: nothing answers") as e:
        _check_reachable(closed, timeout=2)
    assert e.value.exit_code == 7
    _check_reachable("ray://head:10001")  # Ray Client and "auto" are Ray's to resolve
    _check_reachable("auto")
