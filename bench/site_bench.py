"""Static-site export and build times for one indexed SAE.

    python bench/site_bench.py --db index.duckdb --sae ID [--out DIR] [--workers N] [--keep]

Prints, from one run into a fresh folder (or --out): the export (feature pages rendered from the
index by worker processes) and the MkDocs build, each as wall time and time per page; then an
unchanged re-export (every page compared, none written); the peak RSS of this process and of
the largest worker; and the size of the Markdown project and of the built site. The machine's
load average is printed too: these 2-core machines are shared, so read times with it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from saedex.config import SiteConfig
from saedex.site.build import build_site
from saedex.site.export import SiteJob, export_site


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _peak_rss_mb() -> tuple[float, float]:
    """(this process, the largest child) peak RSS; ru_maxrss is in KiB on Linux."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def run(db: Path, sae: str, out: Path, workers: int, progress: bool) -> None:
    cfg = replace(SiteConfig(), workers=workers)
    job = SiteJob(db, sae, out, cfg)
    export = export_site(job, progress=progress)
    started = time.perf_counter()
    site = build_site(out, workers, progress)
    build_s = time.perf_counter() - started
    again = export_site(job, progress=progress)
    own, child = _peak_rss_mb()
    n = export.pages
    print(
        f"load average     {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)"
    )
    print(f"pages            {n:,} ({workers} workers)")
    print(f"export           {export.export_s:7.1f} s  {1000 * export.export_s / n:6.2f} ms/page")
    print(f"build            {build_s:7.1f} s  {1000 * build_s / n:6.2f} ms/page")
    print(f"export + build   {export.export_s + build_s:7.1f} s")
    print(f"re-export        {again.export_s:7.1f} s  ({again.written} files written)")
    print(f"peak RSS         {own:7.0f} MB (main), {child:.0f} MB (largest worker)")
    print(f"project / site   {_size_mb(out / 'docs'):7.0f} MB / {_size_mb(site):.0f} MB -> {site}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--sae", required=True)
    parser.add_argument("--out", type=Path, help="project folder [default: a temporary one]")
    parser.add_argument("--workers", type=int, default=SiteConfig().workers)
    parser.add_argument("--keep", action="store_true", help="keep the temporary project")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="saedex-site-bench-")) / "project"
    try:
        run(args.db, args.sae, out, max(1, args.workers), not args.quiet)
    finally:
        if args.out is None and not args.keep:
            shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
