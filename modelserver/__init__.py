"""Serve one model version. Imports nothing from Django or the portal, so it fits a small image."""
