"""Target health: the ALB threshold state machine (pure), success-code matching, passive outlier
detection (pure) and the active prober/scheduler (async)."""
