"""Ready-to-use recipes for running wordspace on a cluster (printed by `wordspace cluster`)."""

from __future__ import annotations

from wordspace.errors import WordspaceError

_COMMON = """\
# Every worker must reach the store and the corpus audio at the same paths as the client:
# a shared file system, or the store on object storage (s3://..., gs://...) and the corpus
# on a shared mount. Each worker needs the same Python environment with wordspace installed.
"""

_HOSTS = """\
# Plain hosts: one scheduler, any number of workers, started by hand or by your own tooling.
# Use it for a few machines you can log in to (a lab's workstations, cloud VMs).
host0$ dask scheduler --port 8786 --dashboard-address :8787
host1$ dask worker tcp://host0:8786 --nworkers 2 --nthreads 2 --memory-limit 8GB
host2$ dask worker tcp://host0:8786 --nworkers 2 --nthreads 2 --memory-limit 8GB
# GPU hosts: one worker per GPU, each pinned to its device.
gpuhost$ for gpu in 0 1 2 3; do
           CUDA_VISIBLE_DEVICES=$gpu dask worker tcp://host0:8786 --nthreads 1 \\
             --memory-limit 32GB --resources GPU=1 --name "$(hostname)-gpu$gpu" &
         done
# Then, from any machine that reaches host0:
$ export DASK_SCHEDULER_ADDRESS=tcp://host0:8786
$ wordspace extract STORE --model MODEL            # add --gpu on GPU workers
$ wordspace compare STORE --models A B
"""

_SLURM = """\
# SLURM with dask-jobqueue (pip install dask-jobqueue): each batch job is one or more workers;
# the scheduler runs in this script, e.g. on the login node or in a small job of its own.
# Use it on an HPC cluster where compute nodes are only reachable through the batch queue.
# save as wordspace_slurm.py, run `python wordspace_slurm.py &`, then use the scheduler file.
from dask_jobqueue import SLURMCluster
from distributed import Client

cluster = SLURMCluster(
    queue="gpu",                       # your partition
    account="my-project",              # your allocation
    cores=8, processes=2, memory="64GB", walltime="08:00:00",
    job_extra_directives=["--gres=gpu:2"],   # drop for CPU-only nodes
    # one worker per GPU: pin each worker process to its own device
    job_script_prologue=["export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID"],
    scheduler_options={"dashboard_address": ":8787"},
)
cluster.adapt(minimum_jobs=1, maximum_jobs=16)
client = Client(cluster)
client.write_scheduler_file("scheduler.json")
print(cluster.job_script())
input("scheduler running; press Enter to stop\\n")

# In another shell (same file system):
# $ wordspace extract STORE --model MODEL --scheduler-file scheduler.json [--gpu]
# $ wordspace compare STORE --models A B --scheduler-file scheduler.json
"""

_KUBERNETES = """\
# Kubernetes with the dask-kubernetes operator (pip install dask-kubernetes); install the
# operator once per cluster:
#   helm install --repo https://helm.dask.org --create-namespace -n dask-operator \\
#     --generate-name dask-kubernetes-operator
# Use it on cloud or in-house Kubernetes; pods share no disk, so put the store on object
# storage (s3://bucket/store.zarr) and pass its credentials/endpoint as environment variables.
from dask_kubernetes.operator import KubeCluster

cluster = KubeCluster(
    name="wordspace",
    image="registry.example.org/wordspace:latest",   # an image with wordspace installed
    n_workers=8,
    resources={"requests": {"memory": "16Gi", "cpu": "4"}, "limits": {"memory": "16Gi"}},
    env={"AWS_ENDPOINT_URL": "https://s3.example.org", "AWS_ACCESS_KEY_ID": "...",
         "AWS_SECRET_ACCESS_KEY": "..."},
)
# GPU nodes: add {"nvidia.com/gpu": 1} to the worker limits; each pod then sees one GPU.
print(cluster.scheduler_address, cluster.dashboard_link)

# From outside the cluster, forward the scheduler port and point wordspace at it:
# $ kubectl port-forward service/wordspace-scheduler 8786:8786 &
# $ wordspace extract s3://bucket/store.zarr --model MODEL --scheduler tcp://localhost:8786
"""

RECIPES = {"hosts": _HOSTS, "slurm": _SLURM, "kubernetes": _KUBERNETES}


def cluster_recipes(kind: str | None = None) -> str:
    """The recipe for `kind` (hosts, slurm, kubernetes), or all of them."""
    if kind is not None and kind not in RECIPES:
        raise WordspaceError(f"cluster {kind!r}: choose one of {', '.join(RECIPES)}")
    chosen = [kind] if kind else list(RECIPES)
    return _COMMON + "\n".join(f"\n# ===== {name} =====\n{RECIPES[name]}" for name in chosen)
