"""GCP Compute Engine adapter (google-cloud-compute, imported lazily by its modules)."""
