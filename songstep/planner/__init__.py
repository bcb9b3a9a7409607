"""The 5 Hz LM planner: plan / create_sample / format / understand / AutoScore."""

from songstep.planner.core import Planner
from songstep.planner.types import Plan, PlanOptions, Score, SongDescription

__all__ = ["Plan", "PlanOptions", "Planner", "Score", "SongDescription"]
