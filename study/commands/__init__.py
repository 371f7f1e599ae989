"""The `nctune` sub-commands, one module per command (or family): each exposes `register`.

studies (run, resume, ls, show, presets), metrics, datasets, cluster (+ cluster_schema),
analyze, probe, ui, dashboard. study.cli collects them.
"""
