"""Local fakes of destination APIs for demos, integration tests and benchmarks; never used in production."""
