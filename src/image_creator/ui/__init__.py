"""User interface: reporters are injected into the pipeline, never imported by logic."""
