"""Offline evaluation of published runs against a held-out test log.

    1. find each run (an output root's LATEST, or a run directory) and read its manifest
    2. read the test log and each run's training log (the interactions it was given)
    3. score the recommendations (chatrec.evaluation.evaluator)
    4. write evaluation.json and evaluation.html into each run directory
    5. for an A/B comparison: paired deltas with bootstrap intervals, and a report
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass

import polars as pl
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from chatrec.config import TableInput
from chatrec.errors import InputDataError
from chatrec.evaluation.compare import MetricDelta, compare_per_user
from chatrec.evaluation.evaluator import Evaluation, evaluate_recommendations
from chatrec.evaluation.metrics import metric_names
from chatrec.evaluation.report import render_report
from chatrec.manifest import utc_now
from chatrec.publish import LATEST, add_run_file, read_latest
from chatrec.readers import read_table
from chatrec.sources import filesystem_for
from chatrec.validation import validate_interactions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedRun:
    run_dir: str  # path or URI
    manifest: dict

    @property
    def run_id(self) -> str:
        return self.manifest.get("run_id", posixpath.basename(self.run_dir.rstrip("/")))

    @property
    def name(self) -> str:
        """What the run is: a baseline's name, or chatrec's own pipeline."""
        return (self.manifest.get("baseline") or {}).get("name") or "chatrec"

    def training_log(self) -> TableInput:
        """The interactions the run was given, as its manifest records them."""
        try:
            return TableInput.model_validate(self.manifest["config"]["inputs"]["interactions"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputDataError(
                f"the manifest of run {self.run_id} does not say which interactions it was given; "
                "pass --train", source=self.run_dir,
            ) from e


@dataclass(frozen=True)
class RunEvaluation:
    run: PublishedRun
    evaluation: Evaluation
    files: list[str]


def open_run(location: str) -> PublishedRun:
    """An output root (follows LATEST) or a run directory (has manifest.json)."""
    fs, path = filesystem_for(location.rstrip("/"))
    if fs.get_file_info(posixpath.join(path, LATEST)).type == pafs.FileType.File:
        location = read_latest(location)
        fs, path = filesystem_for(location)
    manifest_path = posixpath.join(path, "manifest.json")
    if fs.get_file_info(manifest_path).type != pafs.FileType.File:
        raise InputDataError(
            "not a chatrec output: it holds neither LATEST (an output root) nor manifest.json (a run directory)",
            source=location,
        )
    with fs.open_input_stream(manifest_path) as f:
        return PublishedRun(location.rstrip("/"), json.loads(f.read()))


def read_log(table: TableInput, what: str) -> pl.DataFrame:
    """A validated interaction log (user_id, item_id, timestamp); bad rows are counted and logged."""
    validated = validate_interactions(
        read_table(table, id_columns=("user_id", "item_id")), location=table.display, item_ids=None
    )
    if validated.rejects.num_rows:
        logger.warning("%s log %s: %d row(s) rejected (first: %s)", what, table.display,
                       validated.rejects.num_rows, validated.rejects.column("reason")[0].as_py())
    return pl.from_arrow(validated.table)


def _read_run_table(run: PublishedRun, name: str, columns: list[str]) -> pl.DataFrame | None:
    fs, path = filesystem_for(posixpath.join(run.run_dir, name))
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    return pl.from_arrow(pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=columns))


def evaluate_run(
    run: PublishedRun, test: pl.DataFrame, *, ks: tuple[int, ...], train: pl.DataFrame | None = None
) -> Evaluation:
    recs = _read_run_table(run, "recommendations", ["user_id", "rank", "item_id"])
    if recs is None:
        raise InputDataError("the run has no recommendations/ table", source=run.run_dir)
    items = _read_run_table(run, "item_embeddings", ["item_id"])
    if train is None:
        train = read_log(run.training_log(), "training")
    return evaluate_recommendations(
        recs, test, train, ks=ks,
        catalogue_item_ids=items["item_id"].to_list() if items is not None else None,
        run_name=f"run {run.run_id} ({run.name})",
    )


def evaluate_runs(
    locations: list[str],
    test: TableInput,
    *,
    ks: tuple[int, ...],
    train: TableInput | None = None,
    write: bool = True,
) -> list[RunEvaluation]:
    """Evaluate each run; write evaluation.json and evaluation.html into its directory."""
    runs = [open_run(loc) for loc in locations]
    test_log = read_log(test, "test")
    train_log = read_log(train, "training") if train is not None else None
    results = []
    for run in runs:
        evaluation = evaluate_run(run, test_log, ks=ks, train=train_log)
        files = []
        if write:
            record = {
                "run_id": run.run_id,
                "name": run.name,
                "created_at": utc_now(),
                "test": test.model_dump(mode="json"),
                "train": (train or run.training_log()).model_dump(mode="json"),
                **evaluation.to_dict(),
            }
            files.append(add_run_file(run.run_dir, "evaluation.json", json.dumps(record, indent=2).encode()))
            page = render_report({run.name: evaluation}, title=f"Evaluation of run {run.run_id} ({run.name})")
            files.append(add_run_file(run.run_dir, "evaluation.html", page.encode()))
        results.append(RunEvaluation(run, evaluation, files))
    return results


def display_names(results: list[RunEvaluation]) -> list[str]:
    """Run names, made unique with the run id where two runs share one."""
    names = [r.run.name for r in results]
    return [f"{n} ({r.run.run_id})" if names.count(n) > 1 else n for n, r in zip(names, results)]


def write_report(results: list[RunEvaluation], path: str, *, title: str,
                 comparison: list[MetricDelta] | None = None) -> str:
    """One HTML report over several runs (and an A/B table) at `path`."""
    names = display_names(results)
    page = render_report(
        dict(zip(names, (r.evaluation for r in results))), title=title,
        comparison=((names[0], names[1]), comparison) if comparison is not None else None,
    )
    directory, file_name = posixpath.split(path)
    fs, inner = filesystem_for(directory or ".")
    fs.create_dir(inner, recursive=True)
    return add_run_file(directory or ".", file_name, page.encode())


def compare_runs(results: list[RunEvaluation], *, n_bootstrap: int, seed: int) -> list[MetricDelta]:
    """B against A (the second run against the first), per user, on every metric."""
    a, b = results
    return compare_per_user(
        a.evaluation.per_user, b.evaluation.per_user, metric_names(a.evaluation.ks),
        n_bootstrap=n_bootstrap, seed=seed,
    )


def write_comparison(results: list[RunEvaluation], deltas: list[MetricDelta]) -> str:
    """compare-<run A>.json in run B's directory: B against A on every metric; its location."""
    a, b = results
    record = {"a": a.run.run_id, "b": b.run.run_id, "deltas": [d.to_dict() for d in deltas]}
    return add_run_file(b.run.run_dir, f"compare-{a.run.run_id}.json", json.dumps(record, indent=2).encode())
