"""Drafters: cheap guessers behind one protocol (see base.Drafter)."""

from .base import Draft, Drafter
from .model import ModelDrafter
from .ngram import NgramDrafter
from .policy import AdaptiveDraftLength, FixedDraftLength

__all__ = ["Draft", "Drafter", "ModelDrafter", "NgramDrafter", "AdaptiveDraftLength", "FixedDraftLength"]
