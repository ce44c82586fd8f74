"""The ground layer."""
