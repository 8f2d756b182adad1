"""Azure adapter (azure-mgmt-compute, imported lazily by its modules)."""
