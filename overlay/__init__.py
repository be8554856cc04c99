"""dynq.overlay."""
