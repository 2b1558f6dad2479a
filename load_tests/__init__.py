"""Load generation, monitoring checks and autoscaling runs for equiserve."""
