"""The Celery worker: thin tasks over dwf_service.runner (which calls dwf_core)."""
