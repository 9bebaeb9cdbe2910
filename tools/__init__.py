"""Operator tools and the files the host receives."""
