"""What each stage computes, without Kafka: one module per stage, named after it."""
