"""xrayd's throughput suite: load generator, sink, orchestrator (``python -m bench.run``)."""
