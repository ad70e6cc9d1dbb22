"""Tests of agent; mirrors the packages."""
