"""`python -m bench.drone_energy`: the drone battery model fitted on each DJI log and
checked on the other (cross-validation) and on its own second half (hold-out)."""
