"""Storage: the one entry to every filesystem, with retries and redaction."""
