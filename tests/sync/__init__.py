"""Tests of sync; mirrors the packages."""
