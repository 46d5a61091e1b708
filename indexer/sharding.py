"""The pass of `saedex index --ray`: shards of the planned contexts on Ray workers, merged
exactly into the run file.

The driver plans the run as usual (one tokenisation, so context ids, documents and token ids
are the single-process ones), then cuts the contexts still to do into contiguous shards whose
boundaries fall on the single-process run's batch boundaries: every batch a worker runs is
one the single process would run, padded to the same width, so the activations are the same
numbers, not merely close ones. Each shard is one Ray task (`max_retries`: a worker killed
mid-shard is rerun and resumes from the shard's last commit) writing its own shard file
(saedex.store.merge); worker processes keep the model and SAE loaded between shards. The
driver merges complete shards in order as soon as they are next in line, and the usual final
aggregation derives every table from the merged activations. Killing the driver and running
the same command again keeps the merged and the finished shards and runs only the rest.

Shard files must be reachable from the workers at the same path as from the driver: true on a
local cluster; on several machines, put the index on a shared filesystem (docs/scale.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from saedex.config import IndexConfig, RayConfig
from saedex.errors import SaedexError
from saedex.progress import progress_bar
from saedex.store.catalog import Catalog
from saedex.store.catalog import _remove as remove_file
from saedex.store.merge import Shard, create_shard, is_complete, mark_complete, merge_shard
from saedex.store.writer import STATUS_COMPLETE, IndexWriter, RunState

log = logging.getLogger("saedex.index")

PLAN_FILE = "plan.json"
# Environment a remote cluster's workers need to find the same caches and stay offline.
_FORWARDED_ENV = (
    "SAEDEX_CACHE",
    "XDG_CACHE_HOME",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to index one shard (sent to it through Ray)."""

    model: str
    sae_dir: str
    device: str | None
    dtype: str | None
    sae_id: str
    config: IndexConfig
    shard: Shard
    threads: int


def shard_ranges(first: int, end: int, batch_size: int, n_shards: int) -> list[tuple[int, int]]:
    """Contexts `first`..`end` in at most `n_shards` contiguous ranges of whole batches (the
    single-process run's batches, which start at `first`), as even as whole batches allow."""
    n_batches = math.ceil((end - first) / batch_size)
    per_shard = math.ceil(n_batches / n_shards) if n_batches else 1
    bounds = range(first, end, per_shard * batch_size)
    return [(lo, min(lo + per_shard * batch_size, end)) for lo in bounds]


def shard_dir(run_path: Path) -> Path:
    """Where a run file's shard files live (beside it; never in the catalog)."""
    return run_path.with_name(run_path.name + ".shards")


def load_plan(folder: Path, state: RunState, batch_size: int, n_shards: int) -> list[Shard]:
    """The run's shards: the stored plan when it still fits the run's progress (a resumed
    driver keeps its finished shards, whatever --shards says now), else a new one."""
    path = folder / PLAN_FILE
    first, end = state.contexts_done, state.n_contexts
    if path.exists():
        stored = json.loads(path.read_text())
        ranges = [tuple(r) for r in stored["ranges"]]
        starts = {lo for lo, _ in ranges} | {ranges[-1][1]}
        if stored["batch_size"] == batch_size and ranges[-1][1] == end and first in starts:
            if len(ranges) != n_shards:
                log.info("resuming the stored plan of %d shards", len(ranges))
            return _shards(folder, ranges)
    shutil.rmtree(folder, ignore_errors=True)  # a plan that no longer fits: start over
    folder.mkdir(parents=True)
    ranges = shard_ranges(first, end, batch_size, n_shards)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"batch_size": batch_size, "ranges": ranges}))
    os.replace(tmp, path)
    return _shards(folder, ranges)


def _remove_orphans(db: Path) -> None:
    """Shard folders of runs no longer in progress (replaced by --overwrite, abandoned, or
    finished without --ray)."""
    catalog = Catalog(db)
    pending = {files.pending for files in catalog.runs().values() if files.pending}
    for folder in catalog.dir.glob("*.shards"):
        if folder.name.removesuffix(".shards") not in pending:
            shutil.rmtree(folder, ignore_errors=True)


def _shards(folder: Path, ranges) -> list[Shard]:
    return [Shard(i, lo, hi, folder / f"shard-{i:05d}.duckdb") for i, (lo, hi) in enumerate(ranges)]


def sharded_pass(job, writer: IndexWriter, model, sae, sae_id: str, cfg, state, progress) -> None:
    """The pass of `job` on Ray (same arguments as indexing's own pass, plus the job)."""
    del model, sae  # the driver's copies serve the plan and the logit lens; workers load theirs
    if state.contexts_done >= state.n_contexts:  # every shard merged: only the aggregation left
        return
    from saedex.indexer.sae import resolve_sae

    run_path = Path(
        writer.con.execute(
            "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone()[0]
    )
    _remove_orphans(job.db)
    with ray_cluster(job.ray) as (ray, slots):
        shards = load_plan(shard_dir(run_path), state, cfg.batch_size, job.ray.shards or 2 * slots)
        todo = [s for s in shards if s.first >= state.contexts_done]
        for shard in todo:
            if not shard.path.exists():
                create_shard(writer, sae_id, shard)
        base = dict(model=job.model, sae_dir=str(resolve_sae(job.sae)), device=job.device)
        base |= dict(dtype=job.dtype, sae_id=sae_id, config=cfg)
        tasks = [ShardTask(**base, shard=s, threads=_threads(job.ray)) for s in todo]
        _run_shards(ray, job.ray, writer, tasks, progress)
    shutil.rmtree(shard_dir(run_path), ignore_errors=True)


def _run_shards(ray, rcfg: RayConfig, writer: IndexWriter, tasks: list[ShardTask], progress):
    """Submit the shards not yet complete; merge each one as soon as it is next in line."""
    remote = ray.remote(index_shard).options(
        num_cpus=rcfg.cpus_per_shard,
        num_gpus=_gpus(ray, rcfg),
        max_retries=rcfg.max_retries,
        retry_exceptions=False,  # a worker that died is retried; a Python error is reported
    )
    running = {remote.remote(t): t for t in tasks if not is_complete(t.sae_id, t.shard)}
    finished = {t.shard.index for t in tasks} - {t.shard.index for t in running.values()}
    merged = 0  # tasks are in context order, and merged in that order
    with progress_bar("shard", progress) as bar:
        task_id = bar.add_task("indexing shards", total=len(tasks), completed=len(finished))
        while True:
            while merged < len(tasks) and tasks[merged].shard.index in finished:
                merge_shard(writer, tasks[merged].sae_id, tasks[merged].shard)
                remove_file(tasks[merged].shard.path)  # merged: the run file holds its rows
                merged += 1
            if merged == len(tasks):
                return
            done, _ = ray.wait(list(running), num_returns=1)
            task = running.pop(done[0])
            try:
                ray.get(done[0])
            except Exception as exc:
                for ref in running:
                    ray.cancel(ref, force=True)
                raise SaedexError(
                    f"shard {task.shard.index} failed ({_last_line(exc)}); "
                    "run the same command again to resume from the finished shards"
                ) from exc
            finished.add(task.shard.index)
            bar.advance(task_id)


def _last_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _threads(rcfg: RayConfig) -> int:
    return max(1, int(rcfg.cpus_per_shard))


def _gpus(ray, rcfg: RayConfig) -> float:
    if rcfg.gpus_per_shard is not None:
        return rcfg.gpus_per_shard
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


@contextmanager
def ray_cluster(rcfg: RayConfig) -> Iterator[tuple[object, int]]:
    """Ray, connected as `rcfg.ray` says (an already initialised Ray is used as it is), and
    the number of shards the cluster runs at once; a cluster started here stops here."""
    try:
        import ray
    except ImportError:
        raise SaedexError("--ray needs Ray: pip install 'saedex[ray]'") from None
    owned = not ray.is_initialized()
    if owned:
        _connect(ray, rcfg)
    try:
        resources = ray.cluster_resources()
        gpus = _gpus(ray, rcfg)
        by_cpu = resources.get("CPU", 0) // rcfg.cpus_per_shard if rcfg.cpus_per_shard else 1
        by_gpu = resources.get("GPU", 0) // gpus if gpus else by_cpu
        yield ray, max(1, int(min(by_cpu, by_gpu)))
    finally:
        if owned:
            ray.shutdown()


def start_local_cluster(ray, cpus: int) -> None:
    """A Ray cluster of this machine only, its node on loopback (127.0.0.1). Ray resolves
    127.0.0.1 to the machine's routable address unless told this is no multi-node cluster (the
    switch it has for laptops), so the switch is set for this process and the ones it starts."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        num_cpus=cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )


def _connect(ray, rcfg: RayConfig) -> None:
    if rcfg.ray == "local":
        start_local_cluster(ray, rcfg.local_cpus or os.cpu_count() or 1)
        return
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    try:
        ray.init(address=rcfg.ray, runtime_env={"env_vars": env}, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as exc:
        raise SaedexError(f"--ray {rcfg.ray}: cannot connect to a Ray cluster ({exc})") from None


# -- on the worker -------------------------------------------------------------------------------

_LOADED: dict[tuple, tuple] = {}  # one model and SAE per worker process, kept between shards


def index_shard(task: ShardTask) -> int:
    """Index one shard into its file and mark it complete (resuming a shard a killed worker
    left half done); returns the shard's index."""
    import torch

    from saedex.indexer.indexing import pass_one

    torch.set_num_threads(task.threads)
    model, sae = _load(task)
    with IndexWriter(task.shard.path, task.config.memory_limit) as writer:
        state = writer.run_state(task.sae_id)
        if state.status != STATUS_COMPLETE:
            pass_one(writer, model, sae, task.sae_id, task.config, state, False)
            mark_complete(writer, task.sae_id, task.shard)
    return task.shard.index


def _load(task: ShardTask):
    from saedex.indexer.model import load_model, validate_hook
    from saedex.indexer.sae import load_sae
    from saedex.memory import keep_freed_memory

    key = (task.model, task.sae_dir, task.device, task.dtype)
    if key not in _LOADED:
        keep_freed_memory()
        _LOADED.clear()
        model = load_model(task.model, task.device, task.dtype, False)
        sae = load_sae(Path(task.sae_dir))
        validate_hook(model, sae.cfg.hook_name)
        sae.to(model.device)
        _LOADED[key] = (model, sae)
    return _LOADED[key]
