"""The deployment files are valid and agree with each other and with the code.

ray_cluster.yaml goes through the Ray cluster launcher's own schema; the KubeRay manifests
must name a real job module and a real config; the GPU counts in the example config fit the
clusters; and `ray job submit --working-dir .` packs the code, not the data or the venv.
"""

import copy
import importlib
import shlex
import zipfile
from pathlib import Path

import pytest
import ray
import yaml

from chatrec.config import load_config
from tests.cluster_fixtures import REPO

KUBERAY = REPO / "deploy" / "kuberay"
MANIFESTS = {"RayJob": KUBERAY / "rayjob-full-run.yaml", "RayCronJob": KUBERAY / "raycronjob-nightly-refresh.yaml"}
PACKAGE_LIMIT = 2 * 1024 * 1024  # the code and configs are a few hundred KiB; data or a venv would be far more


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def job_spec(manifest: dict) -> dict:
    """The RayJob spec: the manifest's own, or a RayCronJob's template."""
    return manifest["spec"]["jobTemplate"] if manifest["kind"] == "RayCronJob" else manifest["spec"]


@pytest.fixture(scope="module")
def launcher() -> dict:
    return load(REPO / "ray_cluster.yaml")


@pytest.fixture(scope="module")
def cluster_config():
    return load_config(REPO / "configs" / "cluster-s3.yaml")


def test_ray_cluster_yaml_passes_the_launchers_validation(launcher):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(launcher)))  # what `ray up` runs first


def test_ray_cluster_has_a_cpu_head_and_one_gpu_per_worker(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    (gpu_group,) = [t for name, t in types.items() if name != launcher["head_node_type"]]
    assert gpu_group["resources"]["GPU"] == 1
    assert 1 <= gpu_group["min_workers"] <= gpu_group["max_workers"] <= launcher["max_workers"]
    assert launcher["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-") and "gpu" in launcher["docker"]["image"]
    setup = " ".join(launcher["setup_commands"])
    assert "download.pytorch.org/whl/cu" in setup and "faiss-gpu" in setup and "[s3,cluster]" in setup
    # The dashboard and Jobs API have no authentication by default: loopback only, reached by tunnel.
    assert "--dashboard-host=127.0.0.1" in " ".join(launcher["head_start_ray_commands"])


@pytest.mark.parametrize("kind", MANIFESTS)
def test_kuberay_manifest_runs_a_real_job_with_a_real_config(kind):
    manifest = load(MANIFESTS[kind])
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    spec = job_spec(manifest)
    python, dash_m, module, *args = shlex.split(spec["entrypoint"])
    assert (python, dash_m) == ("python", "-m") and module.startswith("jobs.")
    job = importlib.import_module(module)
    assert callable(job.main)
    config_path = args[args.index("--config") + 1]
    # The config comes from the chatrec-config ConfigMap, made from the repository's file.
    assert (REPO / "configs" / Path(config_path).name).is_file()
    load_config(REPO / "configs" / Path(config_path).name)
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes[mounts[str(Path(config_path).parent)]]["configMap"]["name"] == "chatrec-config"
    if kind == "RayCronJob":
        assert module == "jobs.nightly_refresh" and len(manifest["spec"]["schedule"].split()) == 5
    assert spec["shutdownAfterJobFinishes"] is True and spec["activeDeadlineSeconds"] > 0


def test_kuberay_cluster_specs_agree_and_give_one_gpu_per_worker():
    run, nightly = (job_spec(load(path))["rayClusterSpec"] for path in MANIFESTS.values())
    assert run == nightly
    assert run["rayVersion"] == ray.__version__ and run["enableInTreeAutoscaling"] is True
    (group,) = run["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    head_image = run["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert container["image"] == head_image  # one image: the same model fingerprint and faiss everywhere


def test_the_image_is_built_on_the_pinned_ray(launcher):
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert f"FROM {launcher['docker']['image']}\n" in dockerfile


def test_the_cluster_config_asks_for_no_more_gpus_than_the_clusters_allow(launcher, cluster_config):
    gpu_workers = max(t["max_workers"] for t in launcher["available_node_types"].values() if t["resources"].get("GPU"))
    max_replicas = job_spec(load(MANIFESTS["RayJob"]))["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"]
    # An actor pool larger than the cluster can ever hold waits forever.
    for pool in (cluster_config.encoder, cluster_config.retrieval):
        assert isinstance(pool.num_actors, int) and pool.num_actors <= min(gpu_workers, max_replicas)
    assert cluster_config.encoder.device == "gpu" and cluster_config.retrieval.backend == "gpu"
    assert all("://" in loc for loc in (*cluster_config.inputs.items.locations,
                                        *cluster_config.inputs.interactions.locations, cluster_config.output.path))


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(config):
    load_config(config)


@pytest.mark.parametrize("honour_gitignore", [True, False], ids=["with .gitignore", ".rayignore alone"])
def test_working_dir_upload_holds_code_not_data(tmp_path, honour_gitignore):
    """What `ray job submit --working-dir .` uploads, packed by Ray's own packaging code."""
    from ray._private.runtime_env.packaging import create_package

    package = tmp_path / "working_dir.zip"
    create_package(str(REPO), package, include_gitignore=honour_gitignore)
    names = zipfile.ZipFile(package).namelist()
    tops = {name.split("/")[0] for name in names}
    assert not tops & {".git", ".venv", "data", "out"}
    assert not any(name.endswith((".parquet", ".pyc")) for name in names)
    assert {"jobs/full_run.py", "chatrec/entrypoint.py", "configs/cluster-s3.yaml"} <= set(names)
    assert package.stat().st_size < PACKAGE_LIMIT
