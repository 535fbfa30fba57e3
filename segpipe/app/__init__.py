"""The driver's jobs: annotate, status, job specs and progress."""
