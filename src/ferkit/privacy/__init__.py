"""Privacy: hiding faces (``ferkit anonymize``) and measuring what a network still reads from, or recovers
of, obfuscated faces (``ferkit privacy-report``).

The obfuscation operations live in :mod:`ferkit.privacy.obfuscate` and are shared by the tool
(:mod:`ferkit.privacy.anonymize`) and the experiment. Nothing imported here needs torch; the experiment
modules (``recovery``, ``report``) do and are imported on their own.
"""
from .anonymize import (
    ANONYMIZE_CONFIDENCE, ANONYMIZE_MARGINS, ANONYMIZE_PADS, AnonymizedImage, Anonymizer, VideoAnonymizeReport,
    anonymize_image,
)
from .obfuscate import METHODS, Obfuscation, blur, fill, obfuscate, obfuscate_batch, obfuscate_region, parse_obfuscation, pixelate

__all__ = ["METHODS", "Obfuscation", "blur", "fill", "obfuscate", "obfuscate_batch", "obfuscate_region",
           "parse_obfuscation", "pixelate", "Anonymizer", "anonymize_image", "AnonymizedImage",
           "VideoAnonymizeReport", "ANONYMIZE_CONFIDENCE", "ANONYMIZE_MARGINS", "ANONYMIZE_PADS"]
