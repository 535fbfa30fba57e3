"""The job's config, the records that flow through the pipeline, and identity."""
