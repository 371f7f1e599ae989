"""`nctune probe`: measure a study's trials, or a zoo of pretrained models, on another target.

jobs (what one probe job measures), run (execute the jobs as Ray tasks and log them), zoo
(models nctune did not train), keep (which trial checkpoints are kept for probing).
"""
