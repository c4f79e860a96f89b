"""Tests of dwf_service."""
