"""T15 load test: the Locust user classes (locustfile.py) and the pass criteria shared with benchmarks/load_test.py."""
