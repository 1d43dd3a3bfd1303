"""Shared building blocks for the platform services."""
