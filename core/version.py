"""trace-run's version (pyproject reads it from here) and the semantic-conventions schema its spans follow."""

VERSION = "0.1.0"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
