"""The benchmarks, each behind ``dpr bench NAME``: recall, speed (encode, int8, latency, throughput),
ann, latency, json; and the generator of the README's and docs' result tables (:mod:`bench.docs`)."""
