"""Record a chapter's full-profile run: execute it with CVAELIB_PROFILE=full and write results/<chapter>.json.

    python benchmarks/record_chapter.py 01_vae_mnist            # about the wall time the chapter states
    python benchmarks/record_chapter.py 01_vae_mnist --profile smoke --out /tmp/check   # a quick dry run

The chapter's last cell calls ``cvaelib.provenance.record_chapter``, which writes the figures its text
discusses, with their provenance, when $CVAELIB_RECORD names a folder; this script sets it. The executed
notebook is kept in runs/chapters/ to read the outputs the figures came from.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapter", help="a chapter's file name without .md, e.g. 01_vae_mnist")
    parser.add_argument("--profile", choices=("smoke", "full"), default="full")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="folder for <chapter>.json (results/)")
    args = parser.parse_args(argv)
    source = ROOT / "chapters" / f"{args.chapter}.md"
    if not source.exists():
        parser.error(
            f"chapter: no file {source}; the chapters are {sorted(p.stem for p in source.parent.glob('*.md'))}"
        )

    os.environ.update(CVAELIB_PROFILE=args.profile, CVAELIB_RECORD=str(args.out.resolve()), MPLBACKEND="Agg")
    os.environ["CVAELIB_EXERCISES"] = "1"  # the solutions' figures are recorded too
    notebook = jupytext.read(source)
    start, began = time.perf_counter(), time.time()
    print(f"executing {source.name} in the {args.profile} profile ...", flush=True)
    try:
        NotebookClient(
            notebook, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(source.parent)}}
        ).execute()
    finally:  # keep the outputs, also of a failed run
        executed = ROOT / "runs" / "chapters" / f"{args.chapter}.{args.profile}.ipynb"
        executed.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, executed)
        print(f"{time.perf_counter() - start:.0f} s; executed notebook: {executed}", flush=True)
    written = args.out / f"{args.chapter}.json"
    if not written.exists() or written.stat().st_mtime < began:
        sys.exit(f"{source.name} ran but wrote no {written}: its last cell must call record_chapter")
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
