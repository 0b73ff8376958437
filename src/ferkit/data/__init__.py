"""Data: FER2013 CSV and image-folder readers, FER+ labels, splits, cleaning, balancing."""
from .fer2013 import USAGES, Fer2013, load_fer2013
from .splits import Splits, Subset, prepare_splits, stratified_split

__all__ = ["USAGES", "Fer2013", "Splits", "Subset", "load_fer2013", "prepare_splits", "stratified_split"]
