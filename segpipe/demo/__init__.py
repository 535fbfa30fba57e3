"""Synthetic scenes and the demo command."""
