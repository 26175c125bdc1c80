"""What every package shares, and nothing heavier than numpy: data records and their readers, atomic
file writes, fusion, answer matching, retrieval metrics, enumerated choices and CLI flag generation.
``common`` imports no other package of the project."""
