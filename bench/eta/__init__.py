"""ETA accuracy on real trips: the Porto taxi trips, learned on some taxis, tested on
the others (issue 4, "Accuracy benchmark on real trips")."""
