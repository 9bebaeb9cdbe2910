"""Operator tools behind the `vllm-gcp` command (tools/cli.py), and the stand-ins (tools/standins)
they share with the tests and benchmarks."""
