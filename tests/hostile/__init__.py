"""Crafted malicious bundles (issue 8): see build.py."""
