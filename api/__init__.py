"""The REST API (FastAPI); it never imports torch or dwf_core."""
