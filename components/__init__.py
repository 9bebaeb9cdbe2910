"""The components of the vllm-gcp stack, one ComponentResource per concern."""
