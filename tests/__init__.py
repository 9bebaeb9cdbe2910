"""Tests for vllm-gcp."""
