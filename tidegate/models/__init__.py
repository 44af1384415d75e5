"""Models: registry, scoring, training, the shadow check, promotion and rollback."""
