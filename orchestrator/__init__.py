"""Control plane: search spaces in, Ray Tune / Ray Train runs out, MLflow records; reaches methods via the registry."""
