"""The built-in models (`lightning_prune.zoo.models`) under their public path."""

from lightning_prune.zoo.models import *  # noqa: F403
from lightning_prune.zoo.models import __all__  # noqa: F401
