"""What runs a stage: the abstraction, the registry, the runner, contracts, fingerprints, model lifecycle,
Prefect tasks."""
