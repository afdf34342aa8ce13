"""Drafters: cheap guessers behind one protocol (see base.Drafter)."""

from .base import Draft, Drafter
from .composite import DrafterSet
from .model import ModelDrafter
from .ngram import NgramDrafter
from .self_draft import SelfDrafter
from .suffix import SuffixDrafter, SuffixStore

__all__ = ["Draft", "Drafter", "DrafterSet", "ModelDrafter", "NgramDrafter", "SelfDrafter", "SuffixDrafter",
           "SuffixStore"]
