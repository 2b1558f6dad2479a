"""Ray Serve model deployments: one per (model, backend), batched by size."""
