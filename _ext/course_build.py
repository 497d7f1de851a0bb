"""The book build runs every exercise solution, also those that train models.

In JupyterLab, "Run all" skips the solutions that train a model unless ``CVAELIB_EXERCISES=1``
(``cvaelib.profile.train_exercises``). The published pages show every solution's output, so the
build sets it for the kernels it starts, which inherit this process's environment.
"""

import os


def setup(app):
    os.environ.setdefault("CVAELIB_EXERCISES", "1")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
