"""Graphs: SCGC/SCGC* node representations and clustering, GRACE baseline."""
