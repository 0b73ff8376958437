"""Data: FER2013 CSV and image-folder readers, FER+ labels, splits, cleaning, balancing."""
from .fer2013 import USAGES, Fer2013, load_fer2013
from .splits import Splits, Subset, prepare_splits, stratified_split

__all__ = [
    "USAGES", "Fer2013", "Splits", "Subset", "load_fer2013", "prepare_splits", "stratified_split",
    "load_image_folder", "load_ferplus", "clean_arrays",
]


def __getattr__(name):  # lazy: the folder reader, FER+ and cleaning load on first use
    if name == "load_image_folder":
        from .folders import load_image_folder

        return load_image_folder
    if name == "load_ferplus":
        from .ferplus import load_ferplus

        return load_ferplus
    if name == "clean_arrays":
        from .clean import clean_arrays

        return clean_arrays
    raise AttributeError(f"module 'ferkit.data' has no attribute {name!r}")
