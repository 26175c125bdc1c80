"""Retrieval evaluation: metrics as pure functions, and the tools that run them."""
