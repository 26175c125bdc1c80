"""Reliability tooling behind ``dpr bench reliability``: the checks (:mod:`reliability.checks`), fault
injection, tampered builds, fuzzing, abusive clients, a load generator, and the one helper that starts a
real ``dpr serve`` for benchmarks, checks and tests (:mod:`reliability.serve_proc`)."""
