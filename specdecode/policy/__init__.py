"""The planner: which drafter drafts and how far, every round (docs/policy.md).

`Planner` is the interface the engine calls; `FixedK` and `AdaptiveK` are the trivial planners a
user can pass as `Engine(policy=...)`; `CostPlanner` is the default (`num_draft_tokens="auto"`).
"""

from .base import NO_DRAFT, Plan, Planner, draft_room
from .costs import PassCostRatios
from .fixed import AdaptiveK, FixedK
from .planner import CostPlanner

__all__ = ["NO_DRAFT", "AdaptiveK", "CostPlanner", "FixedK", "PassCostRatios", "Plan", "Planner", "draft_room"]
