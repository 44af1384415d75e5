"""Monitoring: drift, anomalies, accuracy, alerts, the analyst, status and the page."""
