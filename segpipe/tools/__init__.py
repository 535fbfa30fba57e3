"""Tools that read a destination: export, evaluate, preview."""
