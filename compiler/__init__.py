"""dynq.compiler."""
