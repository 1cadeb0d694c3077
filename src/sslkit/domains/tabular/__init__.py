"""Tables: T-JEPA pretraining with SCARF as baseline."""
