"""Which strategy is best: search the TP/PP/DP/EP space with the cost model and return a Plan."""
from .errors import NoFeasiblePlanError, PlannerOptionError
from .plan import Plan, PlanFileError
from .resilience import with_checkpointing
from .search import Constraints, PlanResult, plan
from .space import SearchSpace

__all__ = ["Constraints", "NoFeasiblePlanError", "Plan", "PlanFileError", "PlanResult", "PlannerOptionError",
           "SearchSpace", "plan", "with_checkpointing"]
