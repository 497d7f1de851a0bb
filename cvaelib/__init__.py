"""cvaelib: the companion library of the CVAE course."""

from .checkpoint import load_checkpoint
from .models import CVAE, VAE

__all__ = ["CVAE", "VAE", "load_checkpoint"]
__version__ = "0.1.0"
