"""Make the chapters testable: write each chapters/*.md as the .ipynb that nbval runs."""

import os
from pathlib import Path

import jupytext

import cvaelib  # noqa: F401  (first, before torch: how torch's threads wait, for this process and the kernels)

# nbval runs every exercise solution, also those that train models (cvaelib.profile.train_exercises).
os.environ.setdefault("CVAELIB_EXERCISES", "1")

for md in sorted(Path(__file__).parent.glob("chapters/*.md")):
    notebook = jupytext.read(md)
    jupytext.write(notebook, md.with_suffix(".ipynb"))
