"""Real services as plain local processes, for the tests, the demo and benchmarks.

There is no container engine on every developer machine, so the project starts the
same services the containers would run: an Apache Kafka broker (KRaft, fetched from
Maven Central), PostgreSQL from the operating system's packages, and an S3 endpoint
served by moto. Nothing here is imported by the connectors.
"""
