"""Make the chapters testable: write each chapters/*.md as the .ipynb that nbval runs."""

from pathlib import Path

import jupytext

for md in sorted(Path(__file__).parent.glob("chapters/*.md")):
    notebook = jupytext.read(md)
    jupytext.write(notebook, md.with_suffix(".ipynb"))
