"""Hyperparameter search on Optuna (`mnistcnn tune`): `search` reads the tune file, `study`
runs the trials (each a `train.fit`) on worker processes, `report` sums the study up."""
