"""Notification sink: results-ready messages to patients, critical alerts to on-call (see README.md)."""
