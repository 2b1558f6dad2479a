"""equiserve services: gateway, model deployments, scheduler and command line."""
