"""Serving: a trained run as a bundle, scored in-process (Scorer) or over HTTP (`ctrscale serve`).
See shared/spec/serving.md and the README's Serving section."""
from .bundle import Bundle, BundleError, export_bundle, load_bundle
from .features import Limits, RequestError
from .scorer import Scorer, ScoreResult

__all__ = ["Bundle", "BundleError", "Limits", "RequestError", "ScoreResult", "Scorer", "export_bundle",
           "load_bundle"]
