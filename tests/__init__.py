"""Tests; mirrors the packages."""
