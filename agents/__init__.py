"""The five stages, one module each. ``build(settings)`` returns the stage's runtime."""
