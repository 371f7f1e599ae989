"""Running one study, in the order it happens: preflight -> state -> tuner -> driver (execute)
-> summary; with tracking (the Tune callback that logs to MLflow: trial_logger), the Optuna
storage (optuna_store), progress lines, resume, and the guard (one driver per study, clean stops,
credentials masked)."""
