"""Privacy: hiding faces (``ferkit anonymize``) and measuring what a network still reads from, or recovers
of, obfuscated faces (``ferkit privacy-report``).

The obfuscation operations live in :mod:`ferkit.privacy.obfuscate` and are shared by the tool and the
experiment. Nothing here imports torch except the experiment modules (``recovery``, ``report``).
"""
from .obfuscate import METHODS, Obfuscation, blur, fill, obfuscate, obfuscate_batch, obfuscate_region, parse_obfuscation, pixelate

__all__ = ["METHODS", "Obfuscation", "blur", "fill", "obfuscate", "obfuscate_batch", "obfuscate_region",
           "parse_obfuscation", "pixelate"]
