"""Tests of models; mirrors the packages."""
