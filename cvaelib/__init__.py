"""cvaelib: the companion library of the CVAE course."""

from .threads import choose_threads

# Before torch loads: on a busy machine torch uses the free cores and its threads sleep while they wait.
choose_threads()

from .checkpoint import load_checkpoint  # noqa: E402
from .models import CVAE, VAE  # noqa: E402

__all__ = ["CVAE", "VAE", "load_checkpoint"]
__version__ = "0.1.0"
