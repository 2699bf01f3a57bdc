"""trace-bootstrap: find traceable libraries in an environment and cover them."""
