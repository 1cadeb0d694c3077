"""Domain-agnostic building blocks: losses, heads, EMA, schedules, the loop, runs, evaluation."""
