"""Kafka clients: settings, producer, batch reader, topic scan, admin, transactions, broker."""
