"""dynq.runtime."""
