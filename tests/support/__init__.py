"""Helpers the tests share: images, checkpoints, destinations, servers."""
