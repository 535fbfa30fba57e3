"""The job's config, the items that flow through the pipeline, identity, and the error base."""
