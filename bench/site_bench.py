"""Static-site figures at real widths: size, files, time and memory of `export-site`.

    python bench/site_bench.py [--tokens 50000] [--widths 4608 65536] [--workers 2]
    python bench/site_bench.py --db index.duckdb --sae ID [--sae ID ...]
    python bench/site_bench.py --db index.duckdb --sae ID --document-window 0 64 128 256

Without --db it indexes, over the first --tokens tokens of the default corpus on the default
model, the shipped 4,608-feature SAE ("default") and, for every other width, a random TopK SAE
(k 64, unit-norm random decoder, encoder = decoder^T) on the same hook, into one temporary file.
Then each SAE is exported and built on its own, in a fresh process (so its peak RSS is its own):
export and build wall time, peak RSS of the exporting process and of its largest worker, the
built site's total size and file count, the feature pages' size and, with document windows, the
window files' (one per block, loaded when a reader widens an example). The machine's load average
is printed too: these 2-core machines are shared, so read times with it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from saedex.config import SiteConfig
from saedex.site.build import build_site
from saedex.site.export import SiteJob, export_site

LIMIT_BYTES, LIMIT_FILES = 2**30, 20_000  # GitHub Pages' site size, Cloudflare Pages' files


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _peak_rss_mb() -> tuple[float, float]:
    """(this process, the largest child) peak RSS; ru_maxrss is in KiB on Linux."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def measure(
    db: Path, saes: list[str], out: Path, workers: int, progress: bool, side: int | None = None
) -> None:
    """Export and build `saes` into `out`, and print the figures."""
    cfg = replace(SiteConfig(), workers=workers)
    if side is not None:
        cfg = replace(cfg, document_window=side)
    job = SiteJob(db, tuple(saes), out, cfg)
    export = export_site(job, progress=progress)
    started = time.perf_counter()
    site = build_site(out, workers, progress)
    build_s = time.perf_counter() - started
    own, child = _peak_rss_mb()
    files = _files(site)
    total = sum(p.stat().st_size for p in files)
    blocks = [p.stat().st_size for p in site.glob("*/features/*.html")]
    data = sum(p.stat().st_size for p in _files(site / "data"))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"SAE(s)           {', '.join(export.saes)}")
    print(f"load average     {load} ({os.cpu_count()} CPUs, {workers} workers)")
    print(f"export           {export.export_s:7.1f} s")
    print(f"build            {build_s:7.1f} s")
    print(f"export + build   {export.export_s + build_s:7.1f} s")
    print(f"peak RSS         {own:7.0f} MB (main), {child:.0f} MB (largest worker)")
    print(
        f"site             {total / 2**20:7.0f} MB in {len(files):,} files "
        f"({'within' if total <= LIMIT_BYTES and len(files) <= LIMIT_FILES else 'OVER'} "
        "1 GB / 20,000 files)"
    )
    if blocks:
        print(
            f"feature pages    {len(blocks):,} of {cfg.features_per_page} features, mean "
            f"{sum(blocks) / len(blocks) / 1024:.0f} KB, max {max(blocks) / 1024:.0f} KB"
        )
    windows = [p.stat().st_size for p in site.glob("data/*/win-*.js")]
    contexts = sum(p.stat().st_size for p in site.glob("data/*/ctx-*.js"))
    print(f"shared data      {data / 2**20:7.1f} MB (vocabulary, contexts, search shards, windows)")
    print(f"context shards   {contexts / 2**20:7.1f} MB")
    print(f"document window  {cfg.document_window} tokens either side")
    if windows:
        print(
            f"window files     {len(windows):,}, {sum(windows) / 2**20:.1f} MB, mean "
            f"{sum(windows) / len(windows) / 1024:.0f} KB, max {max(windows) / 1024:.0f} KB"
        )


# -- the indexes -------------------------------------------------------------------------------


def random_sae(path: Path, d_sae: int, k: int = 64, seed: int = 0) -> Path:
    """A TopK SAE on the default hook with unit-norm random decoder rows."""
    import torch

    from saedex.indexer.sae import SaeConfig, save_sae

    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, 576, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    weights = {
        "W_enc": w_dec.T.contiguous(),
        "b_enc": torch.zeros(d_sae),
        "W_dec": w_dec,
        "b_dec": torch.zeros(576),
    }
    cfg = SaeConfig(
        "topk", 576, d_sae, "blocks.6.hook_resid_post", "HuggingFaceTB/SmolLM2-135M-Instruct", k=k
    )
    return save_sae(path, weights, cfg)


def build_index(db: Path, widths: list[int], tokens: int) -> list[str]:
    """Index the shipped SAE (4,608) and random TopK SAEs of the other widths into `db`."""
    ids = []
    for width in widths:
        sae = "default" if width == 4608 else str(random_sae(db.parent / f"sae-{width}", width))
        sae_id = f"{'default' if width == 4608 else 'random-topk'}-{width}"
        cmd = [sys.executable, "-m", "saedex.cli", "index", "--db", str(db), "--sae", sae]
        cmd += ["--sae-id", sae_id, "--corpus", "default", "--max-tokens", str(tokens), "--quiet"]
        print("indexing:", " ".join(cmd), flush=True)
        started = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
        ids.append(sae_id)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="an existing index [default: build one]")
    parser.add_argument("--sae", action="append", help="SAE id(s) in --db, each measured alone")
    parser.add_argument("--widths", type=int, nargs="+", default=[4608, 65536])
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=SiteConfig().workers)
    parser.add_argument("--out", type=Path, help="project folder [default: a temporary one]")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--document-window",
        type=int,
        nargs="+",
        help="SiteConfig.document_window values, each measured [default: the setting's default]",
    )
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="saedex-site-bench-"))
    try:
        if args.measure:
            side = args.document_window[0] if args.document_window else None
            measure(args.db, args.sae, args.out, max(1, args.workers), not args.quiet, side)
            return
        db = args.db or scratch / "index.duckdb"
        saes = args.sae or build_index(db, args.widths, args.tokens)
        for sae, side in [(s, w) for s in saes for w in args.document_window or [None]]:
            out = (args.out or scratch) / f"project-{saes.index(sae)}-{side}"
            cmd = [sys.executable, __file__, "--measure", "--db", str(db), "--sae", sae]
            cmd += ["--out", str(out), "--workers", str(args.workers)]
            cmd += [] if side is None else ["--document-window", str(side)]
            print(
                f"\n$ uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}"
            )
            subprocess.run(cmd + (["--quiet"] if args.quiet else []), check=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
