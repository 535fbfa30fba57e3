"""segpipe: auto-label images at data-lake scale with universal segmentation on Ray."""

__version__ = "0.1.0"
