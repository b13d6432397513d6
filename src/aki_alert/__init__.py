"""aki-alert: real-time acute kidney injury alerting over HL7 v2 / MLLP."""

__version__ = "0.1.0"
