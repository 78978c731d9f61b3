"""Training: the one loop (:func:`sslbench.training.loop.fit`) and its collaborators, one job each."""
