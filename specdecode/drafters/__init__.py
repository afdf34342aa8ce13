"""Drafters: cheap guessers behind one protocol (see base.Drafter)."""

from .base import Draft, Drafter
from .model import ModelDrafter
from .ngram import NgramDrafter
from .policy import AdaptiveDraftLength, FixedDraftLength
from .self_draft import SelfDrafter

__all__ = ["Draft", "Drafter", "ModelDrafter", "NgramDrafter", "SelfDrafter", "AdaptiveDraftLength", "FixedDraftLength"]
