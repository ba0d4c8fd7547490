"""Running models in production: A/B assignment, versioned checkpoints with promotion and rollback, drift."""
