"""dynq.hdl."""
