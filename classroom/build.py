"""Build the classroom editions of the assignments: student notebooks and autograders.

    python classroom/build.py                 # every assignment in classroom/assignments/
    python classroom/build.py 01_vae_mnist    # only the named ones
    python classroom/build.py --no-check      # skip grading the solution edition

Each ``classroom/assignments/<name>.md`` is an Otter Assign master notebook kept as MyST
markdown (like the chapters): raw cells mark the questions, their points, the solutions
and the public and hidden tests. For each one this writes, under ``_build/classroom/<name>/``
(never committed):

- ``student/<name>.ipynb``: the edition handed out, with no solution and no hidden test;
- ``autograder/<name>.ipynb``: the solution edition;
- ``autograder/<name>-autograder.zip``: the autograder, for ``otter run`` (or Gradescope);
- ``solution-results.json``: the solution edition graded by that autograder.

Unless ``--no-check`` is given, the build fails when a student edition leaks a solution or
a hidden test, or when the solution edition scores less than full marks. Grading a
submission by hand:

    otter run -a _build/classroom/<name>/autograder/<name>-autograder.zip -o OUTDIR submission.ipynb
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "classroom" / "assignments"
OUT = ROOT / "_build" / "classroom"


def assignment_names():
    """The names of the assignment masters, in order: ``01_vae_mnist``, ..."""
    return [path.stem for path in sorted(SOURCES.glob("*.md"))]


def _otter(*args, cwd=None):
    """Run the ``otter`` command line of this Python environment; fail loudly with its output.

    Its notebook kernels use one torch thread each (unless ``OMP_NUM_THREADS`` is set): several run at once, and
    torch's default of a thread per core in each made them slower together than one after the other (the five
    solution editions built and graded, 3 at a time, on a 2-core AMD EPYC: 214 s with the default, 83 s with one
    thread each).
    """
    command = [sys.executable, "-m", "otter", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def _solution_lines(master):
    """The non-trivial lines between BEGIN SOLUTION and END SOLUTION in the master's code cells."""
    lines, inside = [], False
    for cell in master.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            if re.match(r"\s*#\s*BEGIN SOLUTION", line):
                inside = True
            elif re.match(r"\s*#\s*END SOLUTION", line):
                inside = False
            elif inside and len(line.strip()) > 3:
                lines.append(line.strip())
    return lines


def _hidden_tests(master):
    """The names of the hidden test functions of the master."""
    names = []
    for cell in master.cells:
        if cell.cell_type == "code" and re.search(r"#\s*BEGIN TEST CONFIG", cell.source):
            config = cell.source.split("END TEST CONFIG")[0]
            if re.search(r"hidden:\s*true", config, flags=re.IGNORECASE):
                names += re.findall(r"^def (\w+)\(", cell.source, flags=re.MULTILINE)
    return names


def leaks(student_notebook, master_source):
    """What of the master's solutions and hidden tests shows in a student edition (a list; empty is good)."""
    text = Path(student_notebook).read_text()
    master = jupytext.read(master_source)
    found = [f"solution line {line!r}" for line in _solution_lines(master) if json.dumps(line)[1:-1] in text]
    found += [f"hidden test {name}" for name in _hidden_tests(master) if name in text]
    found += [
        f"marker {marker!r}"
        for marker in ["BEGIN SOLUTION", "END SOLUTION", "BEGIN TESTS", "hidden=True"]
        if marker in text
    ]
    return found


def grade(submission, autograder):
    """Grade a submission notebook with ``otter run``, locally and offline.

    Returns ``{"score": ..., "possible": ..., "questions": {name: {"score", "possible", "output"}}}``.
    """
    with tempfile.TemporaryDirectory() as results:
        _otter("run", "--no-logo", "-a", Path(autograder).resolve(), "-o", results, Path(submission).resolve())
        tests = json.loads((Path(results) / "results.json").read_text())["tests"]
    questions = {
        test["name"]: {"score": test["score"], "possible": test["max_score"], "output": test["output"]}
        for test in tests
        if "max_score" in test
    }
    return {
        "score": sum(q["score"] for q in questions.values()),
        "possible": sum(q["possible"] for q in questions.values()),
        "questions": questions,
    }


def failing_questions(results):
    """The names of the questions that did not get full marks."""
    return [name for name, q in results["questions"].items() if q["score"] < q["possible"]]


def build_one(name, out=OUT, check=True):
    """Build one assignment into ``out/<name>``; return the paths of what was written."""
    source = SOURCES / f"{name}.md"
    if not source.exists():
        raise FileNotFoundError(f"no assignment {source}; choose among {assignment_names()}")
    target = Path(out) / name
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory() as work:
        master = Path(work) / f"{name}.ipynb"
        nbformat.write(jupytext.read(source), master)
        # The tests are run below against the autograder itself (``otter run``), so Otter
        # Assign does not run them a second time.
        _otter("assign", "--no-run-tests", "--no-pdfs", master, target, cwd=work)
    autograder_dir = target / "autograder"
    (zipped,) = autograder_dir.glob(f"{name}-autograder_*.zip")  # Otter names it with a timestamp
    paths = {
        "student": target / "student" / f"{name}.ipynb",
        "solution": autograder_dir / f"{name}.ipynb",
        "autograder": zipped.rename(autograder_dir / f"{name}-autograder.zip"),
    }
    if check:
        found = leaks(paths["student"], source)
        if found:
            raise RuntimeError(f"{paths['student']} leaks: {', '.join(found)}")
        results = grade(paths["solution"], paths["autograder"])
        paths["results"] = target / "solution-results.json"
        paths["results"].write_text(json.dumps(results, indent=1))
        if results["score"] < results["possible"]:
            raise RuntimeError(
                f"the solution edition of {name} scores {results['score']}/{results['possible']}; "
                f"failing: {failing_questions(results)}"
            )
    return paths


def build(names=None, out=OUT, check=True, jobs=3):
    """Build the named assignments (default: all), ``jobs`` at a time; ``{name: paths}``."""
    names = names or assignment_names()
    # Most of the time goes to starting kernels and importing torch: a few at once pay off.
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {name: pool.submit(build_one, name, out, check) for name in names}
    return {name: future.result() for name, future in futures.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="assignments to build (default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: _build/classroom)")
    parser.add_argument("--no-check", action="store_true", help="do not grade the solution editions")
    parser.add_argument("--jobs", type=int, default=3, help="assignments built at once (default: 3)")
    args = parser.parse_args(argv)
    built = build(args.names or None, args.out, check=not args.no_check, jobs=args.jobs)
    for name, paths in built.items():
        summary = ""
        if "results" in paths:
            results = json.loads(paths["results"].read_text())
            summary = f"; solution scores {results['score']:g}/{results['possible']:g}"
        print(f"{name}: student edition {paths['student']}, autograder {paths['autograder']}{summary}")


if __name__ == "__main__":
    main()
