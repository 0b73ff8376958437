"""Import every architecture module so that each registers itself."""
from . import fastres, gudi, mehra, oleniuk, rathi, vgg  # noqa: F401
