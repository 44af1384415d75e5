"""tidegate: a fault-isolated ML scoring pipeline on Apache Kafka."""

__all__ = ["__version__"]

__version__ = "0.1.0"
